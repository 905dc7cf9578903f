"""Item tokenizers: OPMQ (the paper's), RQ-VAE and OPQ/PQ behind one interface.

Each maps a standardised item embedding to K semantic IDs (one code in [0, C) per codebook).

Shape letters: N items, B items in a batch, D embedding dim, K codebooks (SIDs per item),
C codewords per codebook, d dim of one codeword, H hidden width.

All three hold their codebooks as one parameter ``codebooks [K, C, d]`` and expose:

- ``latents(x) -> [K, B, d]``: the vector each codebook quantizes (k-means init, dead-code re-seeding);
- ``codes(x) -> [B, K]``: nearest-codeword assignment (no gradients);
- ``forward(x) -> QuantizerOutput``: reconstruction, codes and the training losses;
- ``decode(codes) -> [B, D]``: reconstruction from codes alone;
- ``init_codebooks(x)``: k-means initialisation on a sample.

``SemanticTokenizer`` wraps one of them with the embedding standardisation and save/load.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_pipeline.spec import DataError, atomic_write_text
from store.tokenizer.config import TokenizerConfig

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"


@dataclass
class QuantizerOutput:
    """What a training forward pass returns."""

    recon: Tensor
    """[B, D] reconstruction of the standardised input."""
    codes: Tensor
    """[B, K] int64 codes."""
    losses: dict[str, Tensor]
    """Scalar losses; 'total' is what to minimise."""


# -- nearest-codeword search and k-means --------------------------------------------------------


SEARCH_BLOCK = 64
"""Items per block of the nearest-codeword search: the [K, C, block] score block stays in cache."""


def augmented_codebooks(codebooks: Tensor) -> Tensor:
    """[K, C, d] -> [K, C, d+1] rows [2c, -||c||^2], so that scores = cb_aug @ [z; 1] = 2 z.c - ||c||^2."""
    cb = codebooks.detach()
    return torch.cat([2 * cb, -(cb * cb).sum(-1, keepdim=True)], dim=-1)


def nearest_augmented(za: Tensor, cb_aug: Tensor, block: int = SEARCH_BLOCK) -> Tensor:
    """Nearest codewords from augmented operands: za [K, d+1, B] (latents transposed, last row all
    ones), cb_aug [K, C, d+1] (``augmented_codebooks``) -> [K, B] int64.

    ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2 and ||z||^2 is constant per row, so the nearest codeword
    maximises 2 z.c - ||c||^2: one batched matmul per block of items, then a max over the C codewords.
    """
    K, C, _ = cb_aug.shape
    B = za.shape[2]
    out = torch.empty(K, B, dtype=torch.long, device=za.device)
    for s in range(0, B, block):
        b = min(block, B - s)
        scores = torch.bmm(cb_aug, za[:, :, s : s + b])  # [K, C, b]
        # Seen as a channels-last image (batch K, channels b, 1 x C), max_pool2d reduces over the C
        # codewords with SIMD across items: several times faster on CPU than Tensor.argmax(1).
        _, idx = F.max_pool2d(scores.permute(0, 2, 1).unsqueeze(2), (1, C), return_indices=True)
        out[:, s : s + b] = idx.view(K, b)
    return out


def nearest(z: Tensor, codebooks: Tensor, block: int = SEARCH_BLOCK) -> Tensor:
    """Index of the nearest codeword in each codebook: z [K, B, d], codebooks [K, C, d] -> [K, B] int64."""
    K, B, d = z.shape
    with torch.no_grad():
        za = z.new_ones(K, d + 1, B)  # [K, d+1, B]: each block a row-major matrix for the matmul
        za[:, :d] = z.detach().transpose(1, 2)
        return nearest_augmented(za, augmented_codebooks(codebooks).to(z.dtype), block)


def gather_codewords(codebooks: Tensor, idx: Tensor) -> Tensor:
    """codebooks [K, C, d], idx [K, B] -> the chosen codewords [K, B, d] (differentiable in codebooks)."""
    return torch.gather(codebooks, 1, idx.unsqueeze(-1).expand(-1, -1, codebooks.shape[-1]))


def kmeans(x: Tensor, num_clusters: int, iters: int = 20, generator: torch.Generator | None = None) -> Tensor:
    """Batched Lloyd k-means: x [K, M, d] -> centroids [K, num_clusters, d], one clustering per k.

    Initial centroids are random sample points (with replacement when M < num_clusters, plus a little
    noise so duplicates separate). Empty clusters keep their centroid; training re-seeds them.
    """
    K, M, d = x.shape
    x = x.detach()
    if M >= num_clusters:
        idx = torch.stack([torch.randperm(M, generator=generator)[:num_clusters] for _ in range(K)])
    else:
        idx = torch.randint(0, M, (K, num_clusters), generator=generator)
    cent = gather_codewords(x, idx.to(x.device)).clone()
    if M < num_clusters:
        cent += 1e-3 * x.std() * torch.randn(cent.shape, generator=generator).to(x.device)
    for _ in range(iters):
        assign = nearest(x, cent)  # [K, M]
        sums = torch.zeros_like(cent).scatter_add_(1, assign.unsqueeze(-1).expand(-1, -1, d), x)
        counts = torch.zeros(K, num_clusters, device=x.device).scatter_add_(
            1, assign, torch.ones(K, M, device=x.device)
        )
        cent = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp(min=1).unsqueeze(-1), cent)
    return cent


def _uniform_(t: Tensor, fan_in: int) -> Tensor:
    """nn.Linear's default init for batched weights we hold as plain parameters."""
    bound = 1.0 / math.sqrt(fan_in)
    return nn.init.uniform_(t, -bound, bound)


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


# -- the three tokenizers ------------------------------------------------------------------------


class Quantizer(nn.Module):
    """Common helpers; subclasses define latents / forward / decode / init_codebooks."""

    codebooks: nn.Parameter

    def codes(self, x: Tensor) -> Tensor:
        """x [B, D] -> codes [B, K] (int64)."""
        return nearest(self.latents(x), self.codebooks).t()

    def init_codebooks(self, x: Tensor, iters: int = 20, generator: torch.Generator | None = None) -> None:
        """k-means on each codebook's latents of the sample x [M, D]."""
        with torch.no_grad():
            self.codebooks.copy_(kmeans(self.latents(x), self.codebooks.shape[1], iters, generator))

    def reseed(self, dead: Tensor, x: Tensor, generator: torch.Generator | None = None) -> int:
        """Replace dead codewords (dead [K, C] bool) by random latents of the batch x [B, D].

        Returns how many were re-seeded.
        """
        n = int(dead.sum())
        if n == 0:
            return 0
        with torch.no_grad():
            z = self.latents(x)  # [K, B, d]
            for k in dead.any(1).nonzero().flatten().tolist():
                rows = dead[k].nonzero().flatten()
                pick = torch.randint(0, z.shape[1], (len(rows),), generator=generator).to(z.device)
                self.codebooks[k, rows] = z[k, pick]
        return n

    def regulariser(self) -> Tensor:
        return self.codebooks.new_zeros(())


class OPMQ(Quantizer):
    """Orthogonal parallel multi-expert quantization (the STORE paper's tokenizer).

    K experts map x [B, D] to latents z_k [B, d]; each z_k snaps to its nearest codeword s_k of its own
    codebook (straight-through); a decoder reconstructs x from sum_k (z_k + sg(s_k - z_k)). The experts'
    L2-normalised flattened weights V [K, P] are pushed towards orthonormality by ||V V^T - I||_F^2 so the
    K codes carry different information.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        K, D, H, d = cfg.num_sids, cfg.input_dim, cfg.expert_hidden, cfg.latent_dim
        self.cfg = cfg
        # Experts as batched weights: all K first layers are one [B, D] x [D, K*H] matmul.
        first = H if H > 0 else d
        self.w1 = nn.Parameter(_uniform_(torch.empty(K, D, first), D))
        self.b1 = nn.Parameter(_uniform_(torch.empty(K, first), D))
        if H > 0:
            self.w2 = nn.Parameter(_uniform_(torch.empty(K, H, d), H))
            self.b2 = nn.Parameter(_uniform_(torch.empty(K, d), H))
        self.codebooks = nn.Parameter(torch.randn(K, cfg.codebook_size, d))
        self.decoder = _mlp(d, cfg.hidden_dim, D)

    def latents(self, x: Tensor) -> Tensor:
        """x [B, D] -> z [K, B, d]."""
        K, D, first = self.w1.shape
        B = x.shape[0]
        h = x @ self.w1.permute(1, 0, 2).reshape(D, K * first) + self.b1.reshape(-1)  # [B, K*first]
        h = h.view(B, K, first).transpose(0, 1)  # [K, B, first]
        if self.cfg.expert_hidden == 0:
            return h
        return torch.baddbmm(self.b2.unsqueeze(1), F.gelu(h), self.w2)

    def codes(self, x: Tensor) -> Tensor:
        """x [B, D] -> codes [B, K]. Linear experts: the latents come out of one matmul already in
        the search's layout, transposed with a row of ones ([K, d+1, B]), so nothing is copied
        between the expert projection and the codebook search."""
        if self.cfg.expert_hidden > 0:
            return super().codes(x)
        K, D, d = self.w1.shape
        with torch.no_grad():
            proj = x.new_zeros(K, d + 1, D + 1)  # rows (k, j): [w1[k, :, j], b1[k, j]]; row d: [0.., 1]
            proj[:, :d, :D] = self.w1.detach().transpose(1, 2)
            proj[:, :d, D] = self.b1.detach()
            proj[:, d, D] = 1.0
            xa = x.new_ones(D + 1, x.shape[0])
            xa[:D] = x.detach().t()
            za = (proj.view(K * (d + 1), D + 1) @ xa).view(K, d + 1, -1)
            return nearest_augmented(za, augmented_codebooks(self.codebooks).to(x.dtype)).t()

    def expert_weights(self) -> Tensor:
        """V [K, P]: each expert's weights flattened and L2-normalised."""
        parts = [self.w1.reshape(self.w1.shape[0], -1)]
        if self.cfg.expert_hidden > 0:
            parts.append(self.w2.reshape(self.w2.shape[0], -1))
        return F.normalize(torch.cat(parts, dim=1), dim=1)

    def regulariser(self) -> Tensor:
        """||V V^T - I||_F^2: zero iff the experts' flattened weights are orthogonal."""
        V = self.expert_weights()
        gram = V @ V.t()
        return ((gram - torch.eye(V.shape[0], device=V.device)) ** 2).sum()

    def forward(self, x: Tensor) -> QuantizerOutput:
        z = self.latents(x)  # [K, B, d]
        idx = nearest(z, self.codebooks)  # [K, B]
        s = gather_codewords(self.codebooks, idx)
        z_st = z + (s - z).detach()  # straight-through: value s, gradient of z
        recon = self.decoder(z_st.sum(0))
        losses = {
            "recon": F.mse_loss(recon, x),
            "codebook": F.mse_loss(s, z.detach()),
            "commit": F.mse_loss(z, s.detach()),
            "ortho": self.regulariser(),
        }
        losses["total"] = (
            losses["recon"]
            + losses["codebook"]
            + self.cfg.commitment * losses["commit"]
            + self.cfg.ortho_weight * losses["ortho"]
        )
        return QuantizerOutput(recon, idx.t(), losses)

    def decode(self, codes: Tensor) -> Tensor:
        return self.decoder(gather_codewords(self.codebooks, codes.t()).sum(0))


class RQVAE(Quantizer):
    """Residual-quantized VAE (TIGER's tokenizer): encoder -> K levels of residual codebooks -> decoder.

    Level k quantizes the residual r_k = z - sum_{j<k} s_j, so earlier codes are coarser.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = _mlp(cfg.input_dim, cfg.hidden_dim, cfg.latent_dim)
        self.decoder = _mlp(cfg.latent_dim, cfg.hidden_dim, cfg.input_dim)
        self.codebooks = nn.Parameter(torch.randn(cfg.num_sids, cfg.codebook_size, cfg.latent_dim))

    def _residuals(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, d] -> residuals [K, B, d] (detached) and codes [K, B]."""
        r = z.detach()
        res, codes = [], []
        for k in range(self.codebooks.shape[0]):
            idx = nearest(r.unsqueeze(0), self.codebooks[k : k + 1])[0]
            res.append(r)
            codes.append(idx)
            r = r - self.codebooks[k, idx].detach()
        return torch.stack(res), torch.stack(codes)

    def latents(self, x: Tensor) -> Tensor:
        return self._residuals(self.encoder(x))[0]

    def codes(self, x: Tensor) -> Tensor:
        return self._residuals(self.encoder(x))[1].t()

    def init_codebooks(self, x: Tensor, iters: int = 20, generator: torch.Generator | None = None) -> None:
        """Level by level: k-means on the residuals left by the levels already initialised."""
        with torch.no_grad():
            r = self.encoder(x)
            for k in range(self.codebooks.shape[0]):
                self.codebooks[k] = kmeans(r.unsqueeze(0), self.codebooks.shape[1], iters, generator)[0]
                r = r - self.codebooks[k, nearest(r.unsqueeze(0), self.codebooks[k : k + 1])[0]]

    def forward(self, x: Tensor) -> QuantizerOutput:
        z = self.encoder(x)
        res, idx = self._residuals(z)  # [K, B, d], [K, B]
        s = gather_codewords(self.codebooks, idx)
        # Residual r_k as a function of z (gradients reach the encoder through the commitment term).
        r_k = z.unsqueeze(0) - (res[:1] - res)
        z_q = s.sum(0)
        recon = self.decoder(z + (z_q - z).detach())
        losses = {
            "recon": F.mse_loss(recon, x),
            "codebook": F.mse_loss(s, res),
            "commit": F.mse_loss(r_k, s.detach()),
        }
        losses["total"] = losses["recon"] + losses["codebook"] + self.cfg.commitment * losses["commit"]
        return QuantizerOutput(recon, idx.t(), losses)

    def decode(self, codes: Tensor) -> Tensor:
        return self.decoder(gather_codewords(self.codebooks, codes.t()).sum(0))


class OPQ(Quantizer):
    """(Optimised) product quantization: rotate x by an orthogonal R, split into K sub-vectors, quantize each.

    R is learned at initialisation by alternating k-means and orthogonal Procrustes (Ge et al., 2013);
    plain PQ keeps R = I. D is zero-padded to a multiple of K. Codebooks are then refined by minibatch
    gradient steps on ||sg(x_k) - s_k||^2 (online k-means). There is no decoder: the reconstruction is
    the concatenated codewords rotated back.
    """

    procrustes_rounds = 5

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        K = cfg.num_sids
        self.sub_dim = math.ceil(cfg.input_dim / K)
        self.padded_dim = self.sub_dim * K
        self.register_buffer("rotation", torch.eye(self.padded_dim))
        self.codebooks = nn.Parameter(torch.randn(K, cfg.codebook_size, self.sub_dim))

    def _rotated(self, x: Tensor) -> Tensor:
        if self.padded_dim > x.shape[1]:
            x = F.pad(x, (0, self.padded_dim - x.shape[1]))
        return x @ self.rotation

    def latents(self, x: Tensor) -> Tensor:
        K = self.codebooks.shape[0]
        return self._rotated(x).view(x.shape[0], K, self.sub_dim).transpose(0, 1)

    def _unrotate(self, s: Tensor) -> Tensor:
        """Codewords [K, B, d] -> [B, D] in the input space."""
        y = s.transpose(0, 1).reshape(s.shape[1], self.padded_dim) @ self.rotation.t()
        return y[:, : self.cfg.input_dim]

    def init_codebooks(self, x: Tensor, iters: int = 20, generator: torch.Generator | None = None) -> None:
        C = self.codebooks.shape[1]
        with torch.no_grad():
            if not self.cfg.opq_rotation:
                self.codebooks.copy_(kmeans(self.latents(x), C, iters, generator))
                return
            xp = F.pad(x, (0, self.padded_dim - x.shape[1]))
            for _ in range(self.procrustes_rounds):
                z = self.latents(x)
                self.codebooks.copy_(kmeans(z, C, max(iters // 2, 1), generator))
                y = gather_codewords(self.codebooks, nearest(z, self.codebooks))
                y = y.transpose(0, 1).reshape(x.shape[0], self.padded_dim)
                # argmin_R ||xp R - y||_F over orthogonal R: R = U V^T from the SVD of xp^T y.
                u, _, vh = torch.linalg.svd(xp.t() @ y)
                self.rotation.copy_(u @ vh)
            self.codebooks.copy_(kmeans(self.latents(x), C, iters, generator))

    def forward(self, x: Tensor) -> QuantizerOutput:
        z = self.latents(x)
        idx = nearest(z, self.codebooks)
        s = gather_codewords(self.codebooks, idx)
        losses = {"codebook": F.mse_loss(s, z)}
        losses["total"] = losses["codebook"]
        return QuantizerOutput(self._unrotate(s.detach()), idx.t(), losses)

    def decode(self, codes: Tensor) -> Tensor:
        return self._unrotate(gather_codewords(self.codebooks, codes.t()))


def build_quantizer(cfg: TokenizerConfig) -> Quantizer:
    cfg.validate()
    return {"opmq": OPMQ, "rqvae": RQVAE, "opq": OPQ}[cfg.method](cfg)


# -- the saved tokenizer -------------------------------------------------------------------------


class SemanticTokenizer(nn.Module):
    """Standardisation (per-dim mean/std of the training embeddings) followed by a quantizer.

    ``encode(e [N, D]) -> [N, K]`` works for any item with an embedding of the same kind, so items that
    arrive after training (cold start) get SIDs from their content embedding alone.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", torch.zeros(cfg.input_dim))
        self.register_buffer("std", torch.ones(cfg.input_dim))
        self.quantizer = build_quantizer(cfg)

    def standardise(self, e: Tensor) -> Tensor:
        return (e - self.mean) / self.std

    def _check(self, e: Tensor) -> Tensor:
        if e.dim() != 2 or e.shape[1] != self.cfg.input_dim:
            raise ValueError(f"embeddings must be [N, {self.cfg.input_dim}], got {list(e.shape)}")
        return e.to(self.mean.dtype)

    @torch.inference_mode()
    def encode(self, embeddings: Tensor, chunk: int = 1024) -> Tensor:
        """embeddings [N, D] -> SIDs [N, K] int64.

        Works through chunks of ~1000 items (and the search through SEARCH_BLOCK-item blocks) so that
        the intermediates stay in cache: on CPU that is what makes large K x C fast.
        """
        e = self._check(embeddings)
        out = torch.empty(len(e), self.cfg.num_sids, dtype=torch.long, device=e.device)
        for s in range(0, len(e), chunk):
            out[s : s + chunk] = self.quantizer.codes(self.standardise(e[s : s + chunk]))
        return out

    @torch.inference_mode()
    def reconstruct(self, embeddings: Tensor, batch_size: int = 8192) -> Tensor:
        """embeddings [N, D] -> their reconstruction from the SIDs [N, D], in the original space."""
        e = self._check(embeddings)
        out = []
        for s in range(0, len(e), batch_size):
            codes = self.quantizer.codes(self.standardise(e[s : s + batch_size]))
            out.append(self.quantizer.decode(codes) * self.std + self.mean)
        return torch.cat(out) if out else e.clone()

    def save(self, folder: str | os.PathLike) -> Path:
        """folder/config.json + folder/weights.pt (a state_dict), each written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS_FILE}.tmp-{os.getpid()}"
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, tmp)
        os.replace(tmp, folder / WEIGHTS_FILE)
        atomic_write_text(folder / CONFIG_FILE, json.dumps(asdict(self.cfg), indent=2) + "\n")
        return folder


def load_tokenizer(folder: str | os.PathLike) -> SemanticTokenizer:
    """Rebuild a tokenizer saved by ``SemanticTokenizer.save`` (weights loaded with weights_only=True)."""
    folder = Path(folder)
    cfg_path, w_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise DataError(f"{p}: missing tokenizer file (is {folder} a saved tokenizer folder?)")
    try:
        raw = json.loads(cfg_path.read_text())
        known = {f.name for f in fields(TokenizerConfig)}
        cfg = TokenizerConfig(**{k: v for k, v in raw.items() if k in known})
        cfg.validate()
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise DataError(f"{cfg_path}: bad tokenizer config ({e})") from None
    tok = SemanticTokenizer(cfg)
    tok.load_state_dict(torch.load(w_path, map_location="cpu", weights_only=True))
    tok.eval()
    return tok
