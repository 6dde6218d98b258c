from troupe.core.caller import is_anonymous, normalise_phone, resolve_caller_id


def test_phone_wins_and_is_normalised():
    assert resolve_caller_id(phone="+1 (415) 555-1234", call_id="abc", request_id="r1") == "+14155551234"
    assert resolve_caller_id(phone="0044 20 7946 0958") == "+442079460958"


def test_a_national_number_is_read_in_the_default_region():
    # read by a regex this was "+4155551234", a Swiss number
    assert normalise_phone("(415) 555-1234") == "+14155551234"
    assert normalise_phone("020 7946 0958", region="GB") == "+442079460958"
    assert resolve_caller_id(phone="415.555.1234") == "+14155551234"


def test_a_number_that_cannot_be_parsed_is_kept_as_given_not_guessed():
    assert normalise_phone("12") is None
    assert resolve_caller_id(phone="12", call_id="c-1") == "tel-12"


def test_no_digits_is_no_phone_and_falls_through_to_call_id():
    assert normalise_phone("not a number") is None
    assert resolve_caller_id(phone="anonymous", call_id="c-42") == "call-c-42"


def test_known_call_maps_back_to_its_caller():
    assert resolve_caller_id(call_id="c-42", known_calls={"call-c-42": "+14155551234"}) == "+14155551234"
    assert resolve_caller_id(call_id="c-43", known_calls={"call-c-42": "+14155551234"}) == "call-c-43"
    assert resolve_caller_id(call_id="call-c-42", known_calls={"call-c-42": "+14155551234"}) == "+14155551234"


def test_request_id_then_user_then_anonymous():
    assert resolve_caller_id(request_id="12345") == "req-12345"
    assert resolve_caller_id(request_id="req-9") == "req-9"
    assert resolve_caller_id(user="jane@example.com") == "user-jane@example.com"
    first, second = resolve_caller_id(), resolve_caller_id()
    assert is_anonymous(first) and is_anonymous(second) and first != second
    assert not is_anonymous(resolve_caller_id(user="x"))


def test_ids_are_sanitised_and_bounded():
    caller = resolve_caller_id(request_id="a b/c\n" + "x" * 500)
    assert caller.startswith("req-a_b_c_")
    assert len(caller) <= 132
