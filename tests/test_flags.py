"""Flags, --config files and run names: every value is checked before anything is written or removed, and a bad
one is named (flag or file and key) with its value in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, cli, run_cli, train_tiny

from charrnn.model import files as checkpoint

TRAIN = [*TINY, "--max-steps", "2", "--eval-every", "2"]


def one_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("flag, value, says", [
    ("--weight-decay", "-1", "--weight-decay must be a finite number >= 0, not -1.0"),
    ("--seed", "99999999999999999999999", "--seed must be an integer from 0 to 2**64 - 1"),
    ("--seed", "-1", "--seed must be an integer from 0 to 2**64 - 1"),
    ("--epochs", "nan", "--epochs must be a positive number, not nan"),
    ("--epochs", "inf", "--epochs must be a positive number, not inf"),
    ("--minutes", "-2", "--minutes must be a positive number, not -2.0"),
    ("--grad-clip", "-1", "--grad-clip must be a finite number >= 0 (0 = off), not -1.0"),
    ("--warmup-steps", "-1", "--warmup-steps must be >= 0, not -1"),
    ("--lr", "nan", "--lr must be a number in (0, 10], not nan"),
    ("--lr", "0", "--lr must be a number in (0, 10], not 0.0"),
    ("--dropout", "1", "--dropout must be in [0, 1), not 1.0"),
    ("--val-frac", "nan", "--val-frac must be between 0 and 1 (exclusive), not nan"),
    ("--val-chars", "-1", "--val-chars must be >= 0 (0 = no cap), not -1"),
    ("--val-chars", "5", "--val-chars 5 is shorter than one validation window of --seq-len 16; give at least 17"),
    ("--hidden-size", "100000000", "--hidden-size must be from 1 to 65,536, not 100000000"),
    ("--num-layers", "1000", "--num-layers must be from 1 to 64, not 1000"),
    ("--encoding-errors", "ignore", "--encoding-errors must be one of strict, replace, skip, not 'ignore'"),
    ("--cell", "transformer", "--cell must be one of lstm, gru, rnn, not 'transformer'"),
])
def test_a_bad_flag_is_named_with_its_value_and_a_forced_run_survives(corpus, flag, value, says):
    train_tiny(corpus, "--out", "ck3")
    before = snapshot(Path("ck3"))
    line = one_error(cli("train", corpus, *TRAIN, "--out", "ck3", "--force", flag, value), 2)
    assert says in line, line
    assert snapshot(Path("ck3")) == before  # nothing removed, nothing written


def test_a_bad_flag_in_a_real_process_leaves_the_run_intact(corpus):
    train_tiny(corpus, "--out", "ck3")
    before = snapshot(Path("ck3"))
    proc = run_cli("train", corpus, *TRAIN, "--out", "ck3", "--force", "--seed", "99999999999999999999999")
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr
    assert snapshot(Path("ck3")) == before


@pytest.mark.parametrize("toml, says", [
    ("seed = 99999999999999999999", "seed must be an integer from 0 to 2**64 - 1"),
    ("seed = 1.5", "seed must be an integer, not 1.5"),
    ("[train]\nweight_decay = -1", "weight_decay must be a finite number >= 0, not -1"),
    ("[train]\nepochs = nan", "epochs must be a positive number, not nan"),
    ("[model]\nnum_layers = 100", "num_layers must be from 1 to 64, not 100"),
    ("lr = 'fast'", "lr must be a number, not 'fast'"),
    ("colour = 'blue'", "colour is not a setting charrnn knows"),
])
def test_a_bad_config_value_names_the_file_and_the_key(corpus, toml, says):
    train_tiny(corpus, "--out", "ck3")
    before = snapshot(Path("ck3"))
    Path("bad.toml").write_text(toml + "\n", encoding="utf-8")
    line = one_error(cli("train", corpus, *TRAIN, "--out", "ck3", "--force", "--config", "bad.toml"), 2)
    assert "bad.toml" in line and says in line, line
    assert snapshot(Path("ck3")) == before


@pytest.mark.parametrize("name", ["/abs", "..", "../escape", "a/b", ".", ".cache", "", ".hidden", "a\\b"])
def test_a_run_name_is_one_plain_component(corpus, in_tmp, name):
    out = in_tmp / "box" / "ck"
    line = one_error(cli("train", corpus, *TRAIN, "--out", out, "--run", name), 2)
    assert f"--run {name!r} is not a plain name" in line
    assert not (in_tmp / "box").exists() and not Path("/abs").exists()  # nothing made anywhere


def test_the_cache_is_always_out_dot_cache_and_runs_stay_inside_out(corpus, in_tmp):
    train_tiny(corpus, "--out", "ck", "--run", "mine")
    assert sorted(p.name for p in (in_tmp / "ck").iterdir()) == [".cache", "mine"]
    assert list((in_tmp / "ck" / ".cache").glob("*.ids"))


def test_a_hidden_file_gets_a_plain_default_run_name(in_tmp):
    from conftest import make_text

    (in_tmp / ".notes.txt").write_text(make_text(6000), encoding="utf-8")
    train_tiny(in_tmp / ".notes.txt")
    assert (in_tmp / "checkpoints" / "notes" / "best.safetensors").is_file()


def test_sample_seed_beyond_64_bits_is_a_usage_error(corpus):
    train_tiny(corpus)
    line = one_error(cli("sample", "--seed", str(2**64)), 2)
    assert "--seed must be an integer from 0 to 2**64 - 1" in line and str(2**64) in line
    assert cli("sample", "-n", "5", "--seed", str(2**64 - 1)).exit_code == 0


@pytest.mark.parametrize("flag", ["--prime", "--stop", "--separator"])
def test_invalid_utf8_in_a_text_flag_is_a_usage_error(corpus, flag):
    train_tiny(corpus)
    proc = subprocess.run([sys.executable, "-m", "charrnn", "sample", "-n", "5", flag, b"ab\xffc"],
                          capture_output=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == b""
    line = proc.stderr.decode().strip()
    assert line.startswith(f"error: {flag} is not valid UTF-8 (byte 0xff at offset 2)"), line
    assert "Traceback" not in line and len(line.splitlines()) == 1


def test_non_ascii_text_flags_still_work(corpus):
    train_tiny(corpus)
    proc = run_cli("sample", "-n", "3", "--prime", "été ", "--seed", "1")
    assert proc.returncode == 0 and proc.stdout.decode("utf-8").startswith("été ")


def test_empty_stop_is_a_usage_error(corpus):
    train_tiny(corpus)
    assert "--stop needs at least one character" in one_error(cli("sample", "--stop", ""), 2)


def test_empty_item_separator_is_a_usage_error_everywhere(corpus, tmp_path):
    """train, sample and score refuse it alike (sample once fell back to the run's own separator)."""
    train_tiny(corpus)
    listed = tmp_path / "list.txt"
    listed.write_text("ab\ncd\n", encoding="utf-8")
    for args in (("train", str(listed), "--item-separator", ""), ("sample", "--items", "3", "--item-separator", ""),
                 ("score", str(listed), "--items", "--item-separator", "")):
        assert "--item-separator needs at least one character" in one_error(cli(*args), 2), args


def test_dash_h_is_help_everywhere():
    for command in ([], ["train"], ["sample"], ["score"], ["info"], ["corpus"], ["corpus", "get"]):
        short, long = cli(*command, "-h"), cli(*command, "--help")
        assert short.exit_code == 0 and short.stdout == long.stdout and "Usage:" in short.stdout, command


def test_boolean_flags_show_no_type():
    for command, flags in (("train", ["--resume", "--force"]), ("score", ["--per-line", "--json"])):
        text = cli(command, "--help").stdout
        for flag in flags:
            line = next(line for line in text.splitlines() if line.strip().startswith(flag))
            assert "<bool>" not in line and "BOOLEAN" not in line, line
        assert "--device <str>" in text  # value flags keep their type


@pytest.mark.parametrize("args, where", [
    (["train", "x.txt", "--bogus"], "see charrnn train --help"),
    (["sample", "--length", "many"], "see charrnn sample --help"),  # --temp is a list, checked by charrnn
    (["score", "--nope"], "see charrnn score --help"),
    (["corpus", "get", "python", "--nope"], "see charrnn corpus get --help"),
])
def test_flag_errors_point_to_the_subcommands_help(args, where):
    proc = run_cli(*args)  # the console entry point turns parser errors into one line
    assert proc.returncode == 2 and proc.stdout == b""
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0].endswith(where), lines


def test_sample_takes_the_checkpoint_as_argument_or_option(corpus):
    train_tiny(corpus, "--run", "a")
    run_dir = Path("checkpoints/a")
    positional = cli("sample", run_dir, "-n", "40", "--seed", "3")
    option = cli("sample", "-c", run_dir, "-n", "40", "--seed", "3")
    long = cli("sample", "--checkpoint", run_dir / "best.safetensors", "-n", "40", "--seed", "3")
    assert positional.exit_code == option.exit_code == long.exit_code == 0, option.stderr
    assert positional.stdout == option.stdout == long.stdout and len(option.stdout) == 40
    assert "not both" in one_error(cli("sample", run_dir, "-c", run_dir), 2)


def test_sample_given_the_folder_of_runs_uses_its_newest_run(corpus, in_tmp):
    train_tiny(corpus, "--run", "old")
    train_tiny(corpus, "--run", "new", "--seed", "5")
    newest = in_tmp / "checkpoints" / "new" / "best.safetensors"
    via_folder = cli("sample", "checkpoints", "-n", "50", "--seed", "1")
    via_file = cli("sample", newest, "-n", "50", "--seed", "1")
    assert via_folder.exit_code == 0, via_folder.stderr
    assert via_folder.stdout == via_file.stdout
    assert cli("sample", "-n", "50", "--seed", "1").stdout == via_file.stdout  # as with no argument
    other = cli("sample", "checkpoints/old", "-n", "50", "--seed", "1").stdout
    assert other != via_file.stdout


def test_info_says_one_layer_and_the_fractional_epoch(corpus):
    train_tiny(corpus, steps=5)
    result = cli("info", "checkpoints/tiny")
    assert result.exit_code == 0, result.stderr
    assert "gru, 1 layer x 16 units" in result.stdout
    _, meta = checkpoint.load(Path("checkpoints/tiny/last.safetensors"))
    # tiny: 6,000 characters, 600 held out; 4 streams of 1,349 characters, 84 windows of 16 per epoch
    assert meta["epoch"] == pytest.approx(5 / 84)
    assert "epoch 0.06," in result.stdout, result.stdout


def test_the_first_line_says_how_much_is_held_out(corpus):
    assert "6,000 characters (600 held out)" in train_tiny(corpus).stderr
    assert "6,000 characters (100 held out)" in train_tiny(corpus, "--val-chars", "100", "--run", "capped").stderr


def test_a_run_from_before_val_chars_resumes_with_its_whole_split():
    from charrnn import config

    model, train = config.ModelConfig(), {k: v for k, v in vars(config.TrainConfig()).items() if k != "val_chars"}
    assert config.for_resume(vars(model), train, {})[1].val_chars == 0  # no cap: the whole --val-frac, as then
