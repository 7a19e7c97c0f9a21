"""Progress lines of long stage work: one after the first step, then one per further quarter."""

from noisymaml.core.progress import Progress


def test_first_step_then_each_quarter():
    lines = []
    progress = Progress("[x] scoring", 600, "episodes", lines.append)
    for done in range(50, 601, 50):
        progress(done)
    assert lines == ["[x] scoring: 50/600 episodes", "[x] scoring: 150/600 episodes",
                     "[x] scoring: 300/600 episodes", "[x] scoring: 450/600 episodes",
                     "[x] scoring: 600/600 episodes"]


def test_one_step_of_everything_is_one_line():
    lines = []
    Progress("[x] scoring", 4, "episodes", lines.append)(4)
    assert lines == ["[x] scoring: 4/4 episodes"]
