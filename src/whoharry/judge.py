"""The offline familiarity judge: a 0–3 score of how much target knowledge a completion shows.

The paper had GPT-4 grade completions on a 0–3 scale. Offline, the evidence is the target terms a
completion names that its prompt does not already hold: the anchor dictionary's terms (matched as the
dictionary matches them: case-sensitive whole words), the user's extra terms, and the prompt's own
reference terms (case-insensitive). A term inside a longer named term ("Ron" in "Ron Weasley") counts
once, as the longer one.

    0  no target term
    1  one target term, not one the prompt asks for (a vague hint of the target's world)
    2  a reference term of the prompt, or two or more target terms (knowledge specific to the target)
    3  a reference term of the prompt and at least one more target term (detailed knowledge)
"""

from __future__ import annotations

from whoharry.completions import mentions, named_references


def named_terms(prompt: str, completion: str, terms: list[str]) -> list[str]:
    """The terms (case-sensitive, whole words) the completion names and the prompt does not."""
    return [term for term in terms
            if mentions(term, completion, ignore_case=False) and not mentions(term, prompt, ignore_case=False)]


def _outermost(names: list[str]) -> list[str]:
    """Drop a name that lies inside a longer named one."""
    unique = sorted(set(names), key=len, reverse=True)
    kept: list[str] = []
    for name in unique:
        if not any(mentions(name, longer) for longer in kept):
            kept.append(name)
    return kept


def score(prompt: str, completion: str, references: list[str], terms: list[str]) -> tuple[int, list[str]]:
    """The 0–3 score of one completion and the target terms it names (outermost first)."""
    asked = named_references(prompt, completion, references)
    others = named_terms(prompt, completion, terms)
    named = _outermost(asked + others)
    answered = any(mentions(term, name) for name in named for term in asked)
    if answered:
        return (3 if len(named) >= 2 else 2), named
    return min(len(named), 2), named
