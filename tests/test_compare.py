"""The chatbot's compare mode: the CPU recipe's fine-tune (left) and its base (right) answering side
by side in a real browser, a vote saved as a preference row that train.py then trains DPO steps on,
Stop stopping both; and one side failing alone in the runtime."""

import json
import time

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

LEFT, RIGHT = "#left-chat [data-testid=bot]", "#right-chat [data-testid=bot]"


def bot_text(page, selector):
    bots = page.locator(selector)
    return bots.nth(bots.count() - 1).inner_text() if bots.count() else ""


def set_setting(page, label, value):
    box = page.get_by_label(f"number input for {label}")
    if not box.is_visible():
        page.get_by_text("Generation settings", exact=True).click()
    for _ in range(5):
        box.fill(str(value))
        box.press("Enter")
        box.blur()
        slider = box.locator("xpath=ancestor::div[contains(@class, 'block')][1]//input[@type='range']")
        try:
            page.wait_for_function(
                "([el, v]) => Number(el.value) === v", arg=[slider.element_handle(), float(value)], timeout=2000
            )
            return
        except Exception:
            continue
    raise AssertionError(f"the {label} slider did not take {value}")


@pytest.fixture(scope="module")
def compare(trained_run, tmp_path_factory, repo_root, launch_app):
    folder = tmp_path_factory.mktemp("compare")
    votes = folder / "votes.jsonl"
    env = {"FINCH_ADAPTER": str(trained_run[0] / "adapter"), "FINCH_COMPARE": "base", "FINCH_VOTES_FILE": str(votes)}
    proc, port = launch_app(repo_root / "chatbot_app", env, folder / "app.log")
    yield f"http://127.0.0.1:{port}/", votes
    proc.terminate()
    proc.wait(10)


@pytest.mark.trains
def test_both_answers_stream_side_by_side_and_a_vote_trains_dpo_steps(
    compare, page, trained_run, train_script, repo_root, tmp_path
):
    url, votes = compare
    page.goto(url)
    page.locator("#compare-input textarea").wait_for()
    assert "Left:" in page.content() and "adapter" in page.content() and "Right:" in page.content()
    assert "votes and likes are collected" in page.content()
    set_setting(page, "Temperature", 0)
    set_setting(page, "Max new tokens", 40)
    page.locator("#compare-input textarea").fill("What is the capital of Peru?")
    page.locator("#compare-send").click()
    seen = {"left": set(), "right": set()}
    deadline = time.time() + 240
    while not page.locator("#vote-left").is_enabled() and time.time() < deadline:
        seen["left"].add(bot_text(page, LEFT))
        seen["right"].add(bot_text(page, RIGHT))
        time.sleep(0.05)
    left, right = bot_text(page, LEFT), bot_text(page, RIGHT)
    assert left.startswith("Finch here") and "Lima" in left  # the fine-tune
    assert right and not right.startswith("Finch here")  # its base
    for side, final in (("left", left), ("right", right)):
        assert len({s for s in seen[side] if s and s != final}) >= 1, f"the {side} reply did not stream"
    page.locator("#vote-left").click()
    page.wait_for_function("() => document.querySelector('#vote-left').disabled")
    (row,) = [json.loads(line) for line in votes.read_text().splitlines()]
    assert row["kind"] == "compare" and row["choice"] == "left"
    assert row["prompt"][-1] == {"role": "user", "content": "What is the capital of Peru?"}
    assert row["prompt"][0]["role"] == "system"
    assert row["left"]["reply"] == left and row["right"]["reply"] == right
    assert "adapter" in row["left"]["model"] and "adapter" not in row["right"]["model"]
    assert row["settings"]["temperature"] == 0 and row["settings"]["max_new_tokens"] == 40

    # The loop from users' votes back to an adapter: the rows the page wrote, as they are, are
    # train.py's preference data, on top of the adapter that was served.
    run_dir = tmp_path / "from-votes"
    proc = train_script[0](
        *("--config", str(repo_root / "training" / "recipes" / "cpu-smollm2-dpo.yaml"), "--dataset", str(votes)),
        *("--adapter", str(trained_run[0] / "adapter"), "--max_steps", "2", "--eval_fraction", "0"),
        *("--logging_steps", "1", "--verify", "false", "--sample_max_new_tokens", "4", "--output_dir", str(run_dir)),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "adapter" / "metrics.json").read_text())
    assert metrics["method"] == "dpo" and metrics["global_step"] == 2
    assert metrics["rows"]["train"] == 1 and metrics["dropped"] == {}


def test_stop_stops_both_sides(compare, page):
    url, votes = compare
    page.goto(url)
    page.locator("#compare-input textarea").wait_for()
    set_setting(page, "Temperature", 1)
    set_setting(page, "Max new tokens", 1500)
    page.locator("#compare-input textarea").fill("Write a very long story about a dragon, with many chapters.")
    page.locator("#compare-send").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('#left-chat [data-testid=bot], #right-chat "
        "[data-testid=bot]')].filter(b => b.innerText.length > 20).length == 2",
        timeout=240_000,
    )
    page.locator("#compare-stop").click()
    time.sleep(2)  # let the last pieces in flight land
    frozen = bot_text(page, LEFT), bot_text(page, RIGHT)
    time.sleep(3)
    assert (bot_text(page, LEFT), bot_text(page, RIGHT)) == frozen
    assert len(frozen[0].split()) < 600 and len(frozen[1].split()) < 600


def test_one_side_failing_shows_its_message_on_that_side_only(llamacpp_service):
    import socket

    from chat_runtime import ChatService, GenerationParams, ModelSpec
    from chat_runtime.compare import stream_pair
    from chat_runtime.engines import load_engine

    with socket.socket() as s:  # a server that is not there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = ChatService(load_engine(ModelSpec(server_url=f"http://127.0.0.1:{port}/v1", server_model="m")))
    pairs = list(
        stream_pair(
            {"left": llamacpp_service, "right": down},
            "Name a fruit.",
            None,
            GenerationParams(temperature=0, max_new_tokens=12),
        )
    )
    last = pairs[-1]
    assert last.done and last.left.text and last.left.error is None
    assert last.right.text == "" and "not reachable" in last.right.error
