"""whoharry: approximate unlearning of a body of text from a causal language model.

An implementation of "Who's Harry Potter? Approximate Unlearning in LLMs" (Eldan & Russinovich, 2023):
reinforce a copy of the model on the target text, derive generic next-token labels from the base and
reinforced models with an anchor dictionary, and fine-tune the base model on those labels.
"""

__version__ = "0.1.0"
