from opdkit.rewards.extract import last_boxed, last_tag, parse_tool_calls


def test_last_boxed_matches_nested_braces_and_takes_the_last_box():
    assert last_boxed(r"first \boxed{1} then \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert last_boxed(r"\fbox{x^{2}}") == "x^{2}"
    assert last_boxed(r"no box here") is None
    # The unclosed last box is skipped for the previous complete one.
    assert last_boxed(r"\boxed{7} and \boxed{8") == "7"
    # \boxedfoo is not a box command.
    assert last_boxed(r"\boxedx{3}") is None


def test_last_tag():
    assert last_tag("<answer> A </answer> then <answer>B</answer>") == "B"
    assert last_tag("<answer>C") == "C"
    assert last_tag("no tag") is None


def test_tool_calls_nested_objects_and_duplicates():
    text = (
        'Action: search\nAction Input: {"q": {"a": 1}, "n": 2}\n'
        'Action: search\nAction Input: {"n": 3}\nAction: fetch\nAction Input: not json'
    )
    calls = parse_tool_calls(text)
    assert calls.actions == ["search", "search", "fetch"]
    assert calls.inputs == {"q": {"a": 1}, "n": 3}
    # The reference's non-greedy regex cuts the nested object short, so that block fails to parse.
    compat = parse_tool_calls(text, compat_regex=True)
    assert compat.inputs == {"n": 3}
