"""Contrast pairs for steering: one source for the README, the notebooks and the explorer.

A :class:`ContrastPairs` holds positive and negative texts (``positive[i]`` vs ``negative[i]``),
a prompt and the two tokens of the metric ``logit[answer] - logit[contrast]`` at the prompt's
last position. The steering vector is the mean activation difference positive - negative at
the last token (:func:`probe.methods.steering_vector`); adding it with a positive coefficient
should raise the metric.

Example::

    from probe.data.contrast import NUMBER
    v = steering_vector(model, NUMBER.positive, NUMBER.negative)
    steer(model, NUMBER.prompt, v, coefficients=[-4, 0, 4], answer=NUMBER.answer, contrast=NUMBER.contrast)
"""
from __future__ import annotations

from dataclasses import dataclass

from probe.data.tasks.agreement import NOUNS


@dataclass(frozen=True)
class ContrastPairs:
    """Texts ``positive[i]`` vs ``negative[i]``, a ``prompt`` and the metric's ``answer`` / ``contrast`` tokens."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]
    prompt: str
    answer: str
    contrast: str
    description: str = ""


#: plural minus singular subject. Every text ends where the verb's first letter comes next (the
#: trailing space matters: without it the last token is the noun's last letter, and the
#: difference mixes in "s" vs no "s" instead of the subject's number); the metric is "a"(re)
#: vs "i"(s) after a singular subject.
NUMBER = ContrastPairs(tuple(f"the {p} " for _, p in NOUNS), tuple(f"the {s} " for s, _ in NOUNS),
                       "the dog ", "a", "i", "plural vs singular subject (are / is)")

#: code minus prose; the metric is "(" vs "a" after "the ".
CODE = ContrastPairs(
    ("def f(x):\n    return", "for i in range(n):", "import os\nimport sys", "class A(object):", "if x is None:"),
    ("the cat sat on the mat", "it was a cold morning", "she walked to the shop", "we read the letter",
     "the sky is blue today"),
    "the ", "(", "a", "code vs prose")

#: the pairs by name, in the order the explorer offers them
PAIRS: dict[str, ContrastPairs] = {"number": NUMBER, "code": CODE}
