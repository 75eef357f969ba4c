"""Lightning 2 training wrapper of the VQ-GAN tokenizer (manual optimisation, own discriminator).

Replaces taming's ``VQModel`` training code, which uses the removed ``optimizer_idx`` API. Each
training batch makes one generator step (encoder, quantiser, decoder, 1x1 convs) and, from
``loss.disc_start`` on, one discriminator step. Note that Lightning counts ``global_step`` (and
``max_steps``) in optimizer steps: two per batch once the discriminator is on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from torch import nn

from vqgan.config import VQGANConfig
from vqgan.losses import VQGANLossConfig, generator_loss, hinge_discriminator_loss
from vqgan.networks import VQGAN, build_discriminator
from vqgan.tokenizer import CHECKPOINT_CONFIG_KEY, CXRTokenizer

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = VQGANConfig()
DEFAULT_LOSS = VQGANLossConfig()


class VQGANModule(L.LightningModule):
    """Trains :class:`vqgan.networks.VQGAN` on batches ``{"image": [B, 1, S, S] in [0, 1]}``."""

    def __init__(
        self,
        config: VQGANConfig = DEFAULT_CONFIG,
        loss: VQGANLossConfig = DEFAULT_LOSS,
        learning_rate: float = 4.5e-6,
        disc_learning_rate: float | None = None,
        adam_betas: tuple[float, float] = (0.5, 0.9),
        disc_channels: int = 64,
        disc_layers: int = 3,
        log_images_every_n_steps: int = 500,
        num_logged_images: int = 8,
        init_from: str | None = None,
        dead_code_restart_every: int = 0,
        train_decoder_only: bool = False,
    ) -> None:
        """
        Args:
            config: Architecture of the tokenizer.
            loss: Loss weights, discriminator start, clinical/perceptual model paths.
            learning_rate: Adam learning rate of the generator (LLM-CXR: 4.5e-6 at batch 2).
            disc_learning_rate: Adam learning rate of the discriminator (default:
                ``learning_rate``).
            adam_betas: Adam betas of both optimisers (taming: 0.5, 0.9).
            disc_channels: Width of the PatchGAN discriminator's first layer.
            disc_layers: Strided conv layers of the PatchGAN discriminator.
            log_images_every_n_steps: Training batches between reconstruction grids (0: never).
            num_logged_images: Images per reconstruction grid.
            init_from: Optional tokenizer folder or ``.ckpt`` whose generator weights start
                training.
            dead_code_restart_every: Every this many training batches, codes no batch chose in
                that window are moved onto random encoder outputs of the current batch (0: off).
                Small-batch training otherwise collapses onto a handful of codes.
            train_decoder_only: Freeze the encoder, ``quant_conv`` and the codebook and train only
                ``post_quant_conv`` and the decoder: every image keeps exactly the codes of
                ``init_from``, so an LLM trained on those codes draws with the new decoder
                unchanged (the way Stable Diffusion's VAE decoder was fine-tuned).
        """
        super().__init__()
        self.automatic_optimization = False
        self.config = config
        self.loss_config = loss
        self.learning_rate = learning_rate
        self.disc_learning_rate = (
            disc_learning_rate if disc_learning_rate is not None else learning_rate
        )
        self.adam_betas = tuple(adam_betas)
        if dead_code_restart_every < 0:
            raise ValueError(f"dead_code_restart_every must be >= 0, got {dead_code_restart_every}")
        self.dead_code_restart_every = dead_code_restart_every
        if train_decoder_only and not init_from:
            raise ValueError("train_decoder_only needs init_from: the codes to keep")
        if train_decoder_only and dead_code_restart_every:
            raise ValueError(
                "train_decoder_only freezes the codebook; set dead_code_restart_every to 0"
            )
        self.train_decoder_only = train_decoder_only
        self.log_images_every_n_steps = log_images_every_n_steps
        self.num_logged_images = num_logged_images
        self.generator = VQGAN(config)
        self.discriminator = build_discriminator(config.in_channels, disc_channels, disc_layers)
        if init_from:
            source = CXRTokenizer.from_pretrained(init_from)
            if source.config != config:
                raise ValueError(
                    f"init_from={init_from}: its VQGANConfig differs from this run's config"
                )
            self.generator.load_state_dict(source.model.state_dict())
        if train_decoder_only:
            for frozen in self.code_modules():
                frozen.requires_grad_(False)
        # Training batches seen: drives disc_start independently of Lightning's optimizer-step
        # count.
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer(
            "train_code_counts", torch.zeros(config.n_embed, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "window_code_counts", torch.zeros(config.n_embed, dtype=torch.long), persistent=False
        )
        self.register_buffer(
            "val_code_counts", torch.zeros(config.n_embed, dtype=torch.long), persistent=False
        )
        # Frozen helper models are kept out of the module tree (object.__setattr__) so they are
        # neither trained, nor checkpointed, nor exported with the tokenizer.
        object.__setattr__(self, "_clinical", None)
        object.__setattr__(self, "_perceptual", None)

    # ---------------------------------------------------------------- setup
    def setup(self, stage: str) -> None:
        """Load the frozen clinical classifier / perceptual model; fail here if they are missing."""
        if self.loss_config.clinical_weight > 0 and self._clinical is None:
            from vqgan.clinical import ClinicalFeatureExtractor

            extractor = ClinicalFeatureExtractor.from_weights(
                self.loss_config.clinical_weights or ""
            )
            object.__setattr__(self, "_clinical", extractor)
        if self.loss_config.perceptual_weight > 0 and self._perceptual is None:
            path = Path(self.loss_config.perceptual_weights or "")
            if not path.is_file():
                raise FileNotFoundError(
                    f"perceptual_weights not found: {path} (a TorchScript file)"
                )
            perceptual = torch.jit.load(str(path), map_location="cpu").eval()
            perceptual.requires_grad_(False)
            object.__setattr__(self, "_perceptual", perceptual)

    def code_modules(self) -> list[nn.Module]:
        """The parts of the generator that decide an image's codes and their latent vectors."""
        return [getattr(self.generator, name) for name in VQGAN.CODE_PARTS]

    def _frozen(self, model: nn.Module | None) -> nn.Module | None:
        """Move a frozen helper model to this module's device on first use."""
        if model is not None:
            param = next(model.parameters(), None)
            if param is not None and param.device != self.device:
                model.to(self.device)
        return model

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """Generator (encoder, quantiser, decoder, 1x1 convs; only the trainable ones) and
        discriminator Adam optimisers."""
        trainable = [p for p in self.generator.parameters() if p.requires_grad]
        opt_g = torch.optim.Adam(trainable, lr=self.learning_rate, betas=self.adam_betas)
        opt_d = torch.optim.Adam(
            self.discriminator.parameters(), lr=self.disc_learning_rate, betas=self.adam_betas
        )
        return [opt_g, opt_d]

    # ---------------------------------------------------------------- steps
    @staticmethod
    def _network_input(batch: dict[str, Any]) -> torch.Tensor:
        images = batch["image"]
        return images * 2.0 - 1.0  # [0, 1] -> the network's [-1, 1]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 1, S, S] in [0, 1] -> (reconstruction in [0, 1], ids [B, N])."""
        recon, _, ids = self.generator(images * 2.0 - 1.0)
        return ((recon.clamp(-1.0, 1.0) + 1.0) / 2.0), ids

    def _gan_active(self) -> bool:
        return int(self.batches_seen) >= self.loss_config.disc_start

    def _generator_loss(
        self, x: torch.Tensor, recon: torch.Tensor, codebook_loss: torch.Tensor, training: bool
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        gan = self._gan_active()
        return generator_loss(
            self.loss_config,
            x,
            recon,
            codebook_loss,
            logits_fake=self.discriminator(recon) if gan else None,
            last_layer=self.generator.last_layer if gan and training else None,
            extractor=self._frozen(self._clinical),
            perceptual=self._frozen(self._perceptual),
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        opt_g, opt_d = self.optimizers()
        x = self._network_input(batch)
        if self.train_decoder_only:
            self.generator.encoder.eval()
        with torch.set_grad_enabled(not self.train_decoder_only):
            latents = self.generator.pre_quant(x)
            z_q, codebook_loss, ids = self.generator.quantize_latents(latents)
        recon = self.generator.decode(z_q)

        g_loss, terms = self._generator_loss(x, recon, codebook_loss, training=True)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(g_loss)
        opt_g.step()

        if self._gan_active():
            d_loss, d_terms = hinge_discriminator_loss(
                self.discriminator(x.detach()), self.discriminator(recon.detach())
            )
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(self.loss_config.disc_factor * d_loss)
            opt_d.step()
            terms.update(d_terms)

        self.batches_seen += 1
        batch_counts = torch.bincount(ids.flatten(), minlength=self.config.n_embed)
        self.train_code_counts += batch_counts
        if self.dead_code_restart_every:
            self.window_code_counts += batch_counts
            if int(self.batches_seen) % self.dead_code_restart_every == 0:
                terms["restarted_codes"] = self._restart_dead_codes(latents.detach())
        terms["batch_perplexity"] = code_perplexity(
            torch.bincount(ids.flatten(), minlength=self.config.n_embed)
        )
        self.log_dict(
            {f"train/{k}": v for k, v in terms.items()},
            on_step=True,
            on_epoch=True,
            batch_size=x.shape[0],
        )
        self.log("train_loss", terms["loss"], prog_bar=True, on_step=True, batch_size=x.shape[0])
        every = self.log_images_every_n_steps
        if every and (int(self.batches_seen) - 1) % every == 0:
            self._log_reconstructions(x, recon, "train")
        return g_loss.detach()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = self._network_input(batch)
        recon, codebook_loss, ids = self.generator(x)
        _, terms = self._generator_loss(x, recon, codebook_loss, training=False)
        self.val_code_counts += torch.bincount(ids.flatten(), minlength=self.config.n_embed)
        self.log_dict(
            {f"val/{k}": v for k, v in terms.items()},
            on_epoch=True,
            sync_dist=True,
            batch_size=x.shape[0],
        )
        if batch_idx == 0:
            self._log_reconstructions(x, recon, "val")

    # ---------------------------------------------------------------- codebook statistics
    @torch.no_grad()
    def _restart_dead_codes(self, latents: torch.Tensor) -> torch.Tensor:
        """Move codes unused over the last window onto random current encoder outputs.

        The usual remedy for codebook collapse (Dhariwal et al. 2020, Jukebox; Zeghidour et al.
        2021, SoundStream); taming's quantiser has none. Counts are summed over ranks and the
        replacement vectors come from rank 0, so every replica keeps the same codebook.
        """
        counts = self.trainer.strategy.reduce(self.window_code_counts.float(), reduce_op="sum")
        dead = (counts == 0).nonzero().flatten()
        self.window_code_counts.zero_()
        if dead.numel() == 0:
            return torch.zeros((), device=self.device)
        pool = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float()
        pick = torch.randint(0, pool.shape[0], (dead.numel(),), device=pool.device)
        codebook = self.generator.quantize.embedding.weight
        fresh = pool[pick] + 0.01 * pool.std() * torch.randn_like(pool[pick])
        fresh = self.trainer.strategy.broadcast(fresh, src=0)
        codebook[dead] = fresh.to(codebook.dtype)
        return torch.tensor(float(dead.numel()), device=self.device)

    def on_train_epoch_end(self) -> None:
        self._log_codebook(self.train_code_counts, "train")

    def on_validation_epoch_end(self) -> None:
        self._log_codebook(self.val_code_counts, "val")

    def _log_codebook(self, counts: torch.Tensor, stage: str) -> None:
        """Log the fraction of codes used and the code perplexity over the epoch (all ranks)."""
        total = self.trainer.strategy.reduce(counts.float(), reduce_op="sum")
        if total.sum() > 0:
            self.log(f"{stage}/codebook_usage", (total > 0).float().mean(), rank_zero_only=True)
            self.log(f"{stage}/perplexity", code_perplexity(total), rank_zero_only=True)
        counts.zero_()

    # ---------------------------------------------------------------- images and checkpoints
    def _log_reconstructions(self, x: torch.Tensor, recon: torch.Tensor, stage: str) -> None:
        """Grid of inputs (top row) and reconstructions (bottom row): PNG under the log dir,
        and to the logger when it takes images (TensorBoard)."""
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        n = min(self.num_logged_images, x.shape[0])
        pair = torch.cat([x[:n], recon[:n]]).detach().float().clamp(-1, 1).add(1).div(2).cpu()
        grid = torchvision.utils.make_grid(pair, nrow=n, padding=2)
        log_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        out = log_dir / "reconstructions" / f"{stage}_step{self.global_step:08d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        torchvision.utils.save_image(grid, out)
        experiment = getattr(self.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image(f"{stage}/reconstructions", grid, self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the architecture as plain data so ``CXRTokenizer.from_pretrained(ckpt)`` can
        rebuild the network with ``torch.load(weights_only=True)``."""
        checkpoint[CHECKPOINT_CONFIG_KEY] = self.config.to_dict()


def code_perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code histogram: how many codes are effectively in use."""
    probs = counts.float() / counts.sum().clamp_min(1)
    entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum()
    return entropy.exp()
