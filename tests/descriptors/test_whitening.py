import numpy as np
import pytest

from descriptors.whitening import InsufficientSamplesError, PCAWhitening


def _correlated_rows(n: int = 400, c: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(c, c)) * np.linspace(3.0, 0.5, c)[:, None]
    return (rng.normal(size=(n, c)) @ mixing + 5.0).astype(np.float32)


def test_whitened_training_rows_have_identity_covariance():
    rows = _correlated_rows()
    whitening = PCAWhitening.fit(rows)
    assert whitening.dim == 6 and whitening.projection.shape == (6, 6)
    out = whitening.apply(rows)
    assert out.dtype == np.float32 and out.shape == (400, 6)
    assert np.allclose(out.mean(axis=0), 0.0, atol=1e-4)
    assert np.allclose(np.cov(out, rowvar=False), np.eye(6), atol=1e-3)
    assert np.all(np.diff(whitening.eigenvalues) <= 0)  # leading components first


def test_reduced_dimension_keeps_the_leading_components():
    rows = _correlated_rows()
    full, reduced = PCAWhitening.fit(rows), PCAWhitening.fit(rows, dim=3)
    assert reduced.apply(rows).shape == (400, 3)
    assert np.allclose(reduced.apply(rows), full.apply(rows)[:, :3], atol=1e-4)


def test_shrinkage_damps_the_small_components():
    rows = _correlated_rows()
    shrunk = PCAWhitening.fit(rows, shrinkage=1.0)
    variances = np.var(shrunk.apply(rows), axis=0, ddof=1)
    # variance along component i = λ_i / (λ_i + mean λ) < 1, smallest for the smallest λ
    lam = shrunk.eigenvalues.astype(np.float64)
    assert np.allclose(variances, lam / (lam + lam.mean()), rtol=1e-3)


def test_save_load_round_trip_is_exact(tmp_path):
    whitening = PCAWhitening.fit(_correlated_rows(), dim=4, shrinkage=0.1)
    path = tmp_path / "sub" / "whitening.npz"
    whitening.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["whitening.npz"]  # no temp file left
    loaded = PCAWhitening.load(path)
    for name in ("mean", "projection", "eigenvalues"):
        assert np.array_equal(getattr(loaded, name), getattr(whitening, name))
        assert getattr(loaded, name).dtype == np.float32
    assert loaded.shrinkage == 0.1


def test_too_few_rows_raise_with_the_counts():
    rows = _correlated_rows(n=5)
    with pytest.raises(InsufficientSamplesError, match="needs at least 7 training rows, got 5") as info:
        PCAWhitening.fit(rows, dim=6)
    assert info.value.needed == 7 and info.value.available == 5
    clamped = PCAWhitening.fit(rows, dim=6, allow_clamp=True)
    assert clamped.dim == 4
    with pytest.raises(InsufficientSamplesError):
        PCAWhitening.fit(rows[:1])


def test_default_dim_is_limited_by_the_number_of_rows():
    rows = _correlated_rows(n=4)
    assert PCAWhitening.fit(rows).dim == 3


def test_bad_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="exceeds the descriptor dimension"):
        PCAWhitening.fit(_correlated_rows(), dim=7)
    whitening = PCAWhitening.fit(_correlated_rows())
    with pytest.raises(ValueError, match=r"shape \(n, 6\)"):
        whitening.apply(np.zeros((2, 5), dtype=np.float32))
    bogus = tmp_path / "bogus.npz"
    np.savez(bogus, mean=np.zeros(3))
    with pytest.raises(ValueError, match="not a PCAWhitening file"):
        PCAWhitening.load(bogus)
