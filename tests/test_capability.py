import pytest
import torch

from tamperaudit.backends.hf import HfModel
from tamperaudit.data import Question
from tamperaudit.evals.capability import BaseDistributions, aggregate_capability, aggregate_kl, kl_to_base, score_questions
from tamperaudit.records import ChoiceSample, KlSample


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, tokenizer


QUESTIONS = [
    Question.shared("q1", "arithmetic", "Question: What is 2 + 2?\nAnswer:", ("4", "five", "twenty-two", "0"), 0),
    Question.shared("q2", "science", "Question: Which gas do plants take in to make sugar?\nAnswer:", ("oxygen", "carbon dioxide", "helium"), 1),
    Question.shared("q3", "reading", "Sam has a red kite and a blue ball. The kite is", ("blue", "green", "red", "it has no colour at all"), 2),
    # WinoGrande-style: the context varies, the continuation is shared.
    Question("q4", "coreference", (("The trophy did not fit in the case because the trophy", "was too big."),
                                   ("The trophy did not fit in the case because the case", "was too big.")), 0),
]


def _naive_log_probs(model, tokenizer, question):
    """Reference: score each option by running the whole context + continuation sequence."""
    scores = []
    for context_text, choice in question.options:
        context = tokenizer(context_text, add_special_tokens=False)["input_ids"]
        continuation = tokenizer(" " + choice, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0].float(), -1)
        scores.append(sum(float(log_probs[len(context) + i - 1, t]) for i, t in enumerate(continuation)))
    return scores


def test_shared_context_scoring_matches_naive_scoring(tiny):
    model, tokenizer = tiny
    samples, speed = score_questions(HfModel(model, tokenizer), QUESTIONS, batch_size=2)
    for question, sample in zip(QUESTIONS, samples):
        assert sample.log_probs == pytest.approx(_naive_log_probs(model, tokenizer, question), abs=1e-3)
    assert speed.questions == 4


def _choice(id: str, category: str, correct: bool, correct_norm: bool, eval: str = "capability") -> ChoiceSample:
    return ChoiceSample(eval=eval, id=id, category=category, answer=0, log_probs=[0.0, -1.0], predicted=0 if correct else 1,
                        predicted_norm=0 if correct_norm else 1, correct=correct, correct_norm=correct_norm)


def test_accuracy_aggregates_from_samples():
    samples = [_choice("1", "a", True, False), _choice("2", "a", False, False), _choice("3", "b", True, True),
               _choice("4", "b", False, False, eval="capability_select")]  # the search's half is not counted
    result = aggregate_capability(samples)
    assert result.accuracy.rate == pytest.approx(2 / 3)
    assert result.accuracy_norm.rate == pytest.approx(1 / 3)
    assert result.by_category["a"].accuracy.count == 1
    assert aggregate_capability([KlSample(eval="kl", id="a", kl=0.1, tokens=3)]) is None


def test_kl_is_zero_for_an_untrained_adapter_and_positive_after_a_change(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).eval()
    refs = [("a", tokenizer("hello there")["input_ids"], tokenizer(" general kenobi")["input_ids"])]
    base = BaseDistributions(refs)
    samples, _ = kl_to_base(HfModel(model, tokenizer), base)
    assert samples[0].kl == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    samples, _ = kl_to_base(HfModel(model, tokenizer), base)  # the base distributions are reused
    assert samples[0].kl > 1e-4
    assert aggregate_kl(samples).mean == pytest.approx(samples[0].kl)


def test_kl_is_a_mean_per_reply_token_not_a_mean_of_prompt_means():
    from tamperaudit.evals.capability import aggregate_kl

    samples = [KlSample(eval="kl", id="a", kl=1.0, tokens=1), KlSample(eval="kl", id="b", kl=0.0, tokens=3)]
    kl = aggregate_kl(samples)
    assert kl.mean == pytest.approx(0.25) and kl.tokens == 4 and kl.prompts == 2 and kl.max == 1.0
    same = aggregate_kl([KlSample(eval="kl", id=i, kl=0.3, tokens=n) for i, n in (("a", 2), ("b", 7))])
    assert same.mean == pytest.approx(0.3) and same.standard_error == pytest.approx(0.0)
