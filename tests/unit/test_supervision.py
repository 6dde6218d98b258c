from troupe.core.supervision import Policy, decide


def test_first_restart_is_immediate_then_backs_off():
    policy = Policy(max_restarts=5, window_s=60, backoff_s=0.5, backoff_max_s=3)
    assert decide(policy, [], now=100).delay_s == 0
    assert decide(policy, [99], now=100).delay_s == 1.0
    assert decide(policy, [98, 99], now=100).delay_s == 2.0
    assert decide(policy, [97, 98, 99], now=100).delay_s == 3.0  # capped


def test_too_many_restarts_in_window_escalates():
    policy = Policy(max_restarts=3, window_s=10)
    decision = decide(policy, [91, 95, 99], now=100)
    assert decision.action == "escalate"
    assert "3 restarts" in decision.reason


def test_old_restarts_fall_out_of_the_window():
    policy = Policy(max_restarts=3, window_s=10)
    assert decide(policy, [1, 2, 3], now=100).action == "restart"


def test_other_strategies():
    assert decide(Policy(strategy="stop"), [], 0).action == "stop"
    assert decide(Policy(strategy="escalate"), [], 0).action == "escalate"
    assert decide(Policy(strategy="restart_all"), [], 0).action == "restart_all"
    assert decide(Policy(strategy="restart_all", max_restarts=1), [0], 1).action == "escalate"
