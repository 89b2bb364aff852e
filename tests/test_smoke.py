from conftest import cli, train_tiny


def test_train_then_sample_prints_prime_plus_n(corpus):
    train_tiny(corpus)
    result = cli("sample", "-n", "50", "--prime", "ab", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    assert len(result.stdout) == 52 and result.stdout.startswith("ab")
