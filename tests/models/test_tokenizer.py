import string

import pytest

from opdkit.models import SPECIAL_TOKENS, build_char_tokenizer
from opdkit.teachers.reprompt import reprompt_user_text

PRINTABLE = "".join(chr(c) for c in range(32, 127)) + "\n"


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_every_printable_character_is_one_token_and_round_trips(tok):
    ids = tok(PRINTABLE, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(PRINTABLE)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == PRINTABLE
    # Repeated spaces and newlines survive (a whitespace pre-tokenizer would drop them).
    text = "a  b\n\n  c\t"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text.replace("\t", "<unk>")


def test_special_tokens_and_ids(tok):
    # ids 0..6 are the specials in this order (tokenizer.py: CharSpecialTokens)
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS.as_list()) == list(range(7))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) == 7 + 95 + 1  # specials + printable ASCII + newline
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]
    assert tok.decode([tok.bos_token_id, 40, tok.eos_token_id], skip_special_tokens=True) == tok.decode([40])


def test_chat_template_with_generation_prompt(tok):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == "<bos><|s|>Be brief.<|u|>1+2<|a|>"
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    # bos, <|s|>, 9 characters, <|u|>, 3 characters, <|a|>
    assert len(ids) == 1 + 1 + 9 + 1 + 3 + 1
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.convert_tokens_to_ids("<|a|>")
    full = [*messages, {"role": "assistant", "content": "3"}]
    assert tok.apply_chat_template(full, tokenize=False) == "<bos><|s|>Be brief.<|u|>1+2<|a|>3<eos>"


def test_unknown_role_is_refused(tok):
    with pytest.raises(Exception, match="unknown chat role"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)


def test_sdpo_reprompt_text_encodes_without_unknowns(tok):
    text = reprompt_user_text("What is 1+2?", "\\boxed{3}", "Your answer 4 is wrong; digit 1 is wrong.")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text


def test_save_and_autotokenizer_load_round_trip(tok, tmp_path):
    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    sample = string.ascii_letters + "\\boxed{12}\n"
    assert loaded(sample)["input_ids"] == tok(sample)["input_ids"]
    messages = [{"role": "user", "content": "hi"}]
    assert (
        loaded.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        == "<bos><|u|>hi<|a|>"
    )
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.bos_token_id) == (0, 2, 1)
