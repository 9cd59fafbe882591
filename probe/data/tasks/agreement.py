r"""Subject-verb agreement across attractors (BLiMP / Linzen et al. style).

    "the key to the cabinets is red."      good
    "the key to the cabinets are red."     bad (agrees with the attractor "cabinets")

A sentence is ``the SUBJ [PREP the ATTR]{0,1,2} VERB PRED.`` with independent random
numbers for the subject and each attractor, so about half of the attracted sentences have
a mismatching nearest noun. The answer is the first byte where the two verb forms differ
(``is``/``are`` at the verb's first byte, ``was``/``were`` at its second, ``has``/``have``
at its third); the contrast is the other form's byte.

Labels: ``number`` (0 singular, 1 plural subject) on every token.
Meta: ``plural``, ``n_attractors``, ``mismatch`` (nearest attractor's number differs),
``subject_pos`` / ``attractor_pos`` (last byte of each noun), ``verb_pos`` (first verb byte).
"""
from __future__ import annotations

import numpy as np

from probe.data.tasks.base import Task, TaskExample, byte_example

NOUNS = (("key", "keys"), ("cabinet", "cabinets"), ("dog", "dogs"), ("author", "authors"), ("box", "boxes"),
         ("child", "children"), ("friend", "friends"), ("table", "tables"), ("picture", "pictures"),
         ("teacher", "teachers"), ("door", "doors"), ("bird", "birds"), ("student", "students"),
         ("letter", "letters"), ("window", "windows"), ("man", "men"), ("woman", "women"),
         ("house", "houses"), ("song", "songs"), ("idea", "ideas"))
PREPS = ("to", "near", "of", "behind", "with", "on", "under", "for", "beside")
#: (singular, plural, predicates)
VERBS = (("is", "are", ("red", "old", "here", "broken", "new", "small", "gone", "on the shelf")),
         ("was", "were", ("red", "old", "here", "broken", "new", "small", "gone", "on the shelf")),
         ("has", "have", ("a name", "no color", "two parts", "a lock")))


def _divergence(a: str, b: str) -> int:
    return next(i for i, (x, y) in enumerate(zip(a + " ", b + " ")) if x != y)


class Agreement(Task):
    name = "agreement"
    chance = 0.5
    description = "subject-verb agreement with 0-2 prepositional attractors"
    #: the conditions of :meth:`condition`, in the order a table shows them
    CONDITIONS = ("no attractor", "attractor agrees", "attractor disagrees")

    def condition(self, example: TaskExample) -> str:
        """Whether the noun nearest the verb has the subject's number: ``"no attractor"``,
        ``"attractor agrees"`` (the nearest attractor has it) or ``"attractor disagrees"`` (a model
        that agrees with the nearest noun scores below chance here, Linzen et al. 2016)."""
        if not example.meta["n_attractors"]:
            return "no attractor"
        return "attractor disagrees" if example.meta["mismatch"] else "attractor agrees"

    def example(self, rng: np.random.Generator) -> TaskExample:
        plural = int(rng.integers(2))
        text = "the " + NOUNS[rng.integers(len(NOUNS))][plural]
        subject_pos = len(text) - 1
        n_attr = int(rng.choice(3, p=[0.2, 0.5, 0.3]))
        attr_pos, attr_num = [], []
        for _ in range(n_attr):
            num = int(rng.integers(2))
            text += f" {PREPS[rng.integers(len(PREPS))]} the {NOUNS[rng.integers(len(NOUNS))][num]}"
            attr_pos.append(len(text) - 1)
            attr_num.append(num)
        sing, plur, preds = VERBS[rng.integers(len(VERBS))]
        good_verb, bad_verb = (plur, sing) if plural else (sing, plur)
        pred = preds[rng.integers(len(preds))]
        verb_pos = len(text) + 1
        good = f"{text} {good_verb} {pred}."
        bad = f"{text} {bad_verb} {pred}."
        k = _divergence(good_verb, bad_verb)
        answer = verb_pos + k
        meta = {"plural": plural, "n_attractors": n_attr, "mismatch": bool(attr_num and attr_num[-1] != plural),
                "subject_pos": subject_pos, "attractor_pos": attr_pos, "attractor_plural": attr_num,
                "verb_pos": verb_pos}
        return byte_example(self.name, good, [(answer, bad[answer])], {"number": [plural] * (len(good) + 1)},
                            meta, good, bad)
