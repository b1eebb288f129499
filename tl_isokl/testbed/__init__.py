"""The embedded test-bed model: a small trained OLMo-2 that thinks, then answers yes/no questions as JSON.

`corpus` generates the synthetic world and its text; `train` fits the tokenizer and the model (never run in CI:
the weights ship in `model/`); `evaluate` measures the numbers recorded in the model card.
"""
