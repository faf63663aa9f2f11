"""Label vocabulary, templates, synonyms, metadata-aware and held-out-word-aware prompt sampling."""

import numpy as np
import pytest

from modeling_facet import FacetVLMConfig
from modeling_facet.prompts import (
    ACTION_UNIT_TEMPLATES,
    BP4D_ACTION_UNITS,
    EXPRESSION_TEMPLATES,
    EXPRESSIONS,
    FACS_ACTION_UNITS,
    MICRO_EXPRESSIONS,
    SYNONYMS,
    canonical_label,
    class_prompts,
    fix_articles,
    is_action_unit,
    label_prompt,
    label_synonyms,
    label_word,
    sample_prompt,
    subject_phrase,
)


HELD_OUT = ("joyful", "astonished", "furious", "disgusted", "scared", "unhappy")
CANONICAL_WORDS = {
    "anger": "angry", "disgust": "disgusted", "fear": "afraid", "happiness": "happy", "sadness": "sad",
    "surprise": "surprised", "neutral": "neutral",
}  # fmt: skip


def test_vocabulary_covers_every_benchmark():
    assert set(FacetVLMConfig.from_preset("tiny").id2label.values()) | {"neutral"} == set(EXPRESSIONS)
    assert MICRO_EXPRESSIONS == ("positive", "negative", "surprise", "repression", "others")
    assert len(BP4D_ACTION_UNITS) == 12
    names = ["inner brow raiser", "lip corner puller", "lip pressor"]
    assert [label_word(au) for au in ("AU1", "AU12", "AU24")] == names
    assert all(canonical_label(au) in SYNONYMS for au in BP4D_ACTION_UNITS)
    assert {5, 9, 25, 26, 43, 45, 46} <= set(FACS_ACTION_UNITS)
    for label in EXPRESSIONS:
        assert len(SYNONYMS[label]) >= 5
        assert label_word(label) == CANONICAL_WORDS[label]
    for word in HELD_OUT:
        assert any(word in words for words in SYNONYMS.values()), word


def test_label_spellings_resolve_and_unknown_labels_pass_through():
    for spelling in ("happiness", "Happiness", "HA", "happy", " happy "):
        assert canonical_label(spelling) == "happiness"
    for spelling in ("AU12", "au12", "AU 12", "au012", "lip corner puller"):
        assert canonical_label(spelling) == "AU12" and is_action_unit(spelling)
    assert canonical_label("other") == "others" and label_word("others") == "ambiguous"
    assert canonical_label("AU3") is None  # not a FACS action unit
    # Zero-shot labels, held-out synonyms included, are used verbatim.
    for label in ("contempt", "joy", "Joyful", "pain"):
        assert canonical_label(label) is None and not is_action_unit(label)
        assert label_word(label) == label and label_synonyms(label) == (label,)
    assert label_synonyms("happiness")[:2] == ("happy", "joyful")


def test_templates_and_class_prompts():
    assert len(EXPRESSION_TEMPLATES) >= 8 and len(ACTION_UNIT_TEMPLATES) >= 8
    assert "a person looking {}" in EXPRESSION_TEMPLATES and "a 3D face with a {} expression" in EXPRESSION_TEMPLATES
    prompts = class_prompts(["anger", "happiness", "contempt"])
    assert len(prompts) == 3 and {len(row) for row in prompts} == {len(EXPRESSION_TEMPLATES)}
    assert prompts[0][0] == "a 3D face with an angry expression"
    assert prompts[1][1] == "a person looking happy"
    assert prompts[2][0] == "a 3D face with a contempt expression"
    action_units = class_prompts(["AU6", "AU12"])
    assert len(action_units[0]) == len(ACTION_UNIT_TEMPLATES)
    assert action_units[1][0] == "a face with the lip corner puller action"
    assert len(class_prompts(["AU6", "happiness"])[0]) == len(EXPRESSION_TEMPLATES)  # mixed: expression templates
    assert class_prompts("sadness", templates=["{} face"]) == [["sad face"]]
    for bad in (["no field"], ["{} and {}"], ["{person} is {}"], []):
        with pytest.raises(ValueError, match="template"):
            class_prompts(["anger"], templates=bad)
    with pytest.raises(ValueError, match="at least one label"):
        class_prompts([])


def test_articles_follow_the_next_word():
    assert fix_articles("a angry man and an sad woman") == "an angry man and a sad woman"
    assert fix_articles("A East Asian man, a European woman, a unhappy face") == (
        "An East Asian man, a European woman, an unhappy face"
    )
    assert fix_articles("a 3D face") == "a 3D face"
    assert label_prompt(["AU6", "AU12"], "a face with the {} action") == (
        "a face with the cheek raiser and lip corner puller action"
    )
    assert label_prompt([], "a {} face") == "a neutral face"


def test_sampling_is_deterministic_and_varied():
    def draw(seed):
        rng = np.random.default_rng(seed)
        return [sample_prompt(label, rng) for label in EXPRESSIONS * 5]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)
    prompts = draw(2)
    assert len(set(prompts)) > 25
    happy_prompts = prompts[EXPRESSIONS.index("happiness") :: len(EXPRESSIONS)]
    assert all(any(word in prompt for word in SYNONYMS["happiness"]) for prompt in happy_prompts)
    assert sample_prompt("contempt", np.random.default_rng(0)).count("contempt") == 1


def test_excluded_words_are_never_sampled():
    rng = np.random.default_rng(0)
    prompts = [sample_prompt(label, rng, exclude=HELD_OUT) for label in EXPRESSIONS * 60]
    words = {word for prompt in prompts for word in prompt.replace(",", " ").split()}
    assert not words & set(HELD_OUT)
    unrestricted = {word for label in EXPRESSIONS * 60 for word in sample_prompt(label, rng).split()}
    assert set(HELD_OUT) <= unrestricted  # without the exclusion, each of them does come up
    with pytest.raises(ValueError, match="excluded"):
        sample_prompt("contempt", rng, exclude=["Contempt"])


def test_excluded_canonical_word_names_the_class_by_its_next_synonym():
    assert label_word("disgust") == "disgusted"
    assert label_word("disgust", exclude=["Disgusted"]) == SYNONYMS["disgust"][1]
    prompts = class_prompts(["disgust", "happiness"], ["a {} face"], exclude=["disgusted", "joyful"])
    assert prompts == [[f"a {SYNONYMS['disgust'][1]} face"], ["a happy face"]]
    with pytest.raises(ValueError, match="excluded"):
        class_prompts(["contempt"], exclude=["contempt"])


def test_metadata_aware_prompts():
    metadata = {"gender": "F", "age": 23, "race": "AE"}
    assert subject_phrase(metadata) == "young East Asian woman"
    assert subject_phrase({"sex": "male", "age": 61}) == "older man"
    assert subject_phrase({"age": "40", "ethnicity": "Latino"}) == "middle-aged Latino person"
    assert subject_phrase({"gender": "nonbinary"}) == "nonbinary person"
    assert subject_phrase({}) is None and subject_phrase(None) is None
    rng = np.random.default_rng(0)
    always = [sample_prompt("anger", rng, metadata, metadata_probability=1.0) for _ in range(30)]
    assert all("young East Asian" in prompt for prompt in always)
    nouns = {word for prompt in always for word in prompt.split() if word in ("woman", "female", "man", "person")}
    assert nouns == {"woman", "female"}
    assert any(prompt.startswith("an ") for prompt in always)  # "an angry young East Asian woman"
    mixed = [sample_prompt("anger", rng, metadata) for _ in range(60)]
    assert 10 < sum("East Asian" in prompt for prompt in mixed) < 50
    # Action-unit prompts never name the subject.
    assert not any("Asian" in sample_prompt("AU12", rng, metadata, metadata_probability=1.0) for _ in range(10))


def test_multi_label_samples():
    rng = np.random.default_rng(0)
    assert "cheek raiser and lip corner puller" in sample_prompt(["AU6", "AU12"], rng)
    only_canonical = [word for words in SYNONYMS.values() for word in words[1:]]
    assert "happy and surprised" in sample_prompt(["happiness", "surprise"], rng, exclude=only_canonical)
    assert "neutral" in sample_prompt([], rng, exclude=only_canonical)  # no label: a neutral face
