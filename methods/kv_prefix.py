"""Shared machinery for methods that prepend per-layer key/value prefixes.

The prefix reaches attention through the backbone's own cache: a ``DynamicCache`` holding
P key/value vectors per layer (shaped by the *key/value* heads, so grouped-query attention
is right), with the attention mask extended by P ones. This is the mechanism Li & Liang
used with GPT-2's ``past`` and the one PEFT uses, which is why our prefixes can be checked
against PEFT's tensor for tensor. Rotary backbones treat cached keys as already rotated.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bench.core.config import ConfigError
from methods.base import Adapter, Anatomy, AttachContext, check_state, with_positions


def build_cache(kv: torch.Tensor, batch_size: int, read_only: bool = False) -> Any:
    """kv: (L, 2, H_kv, P, d_h) -> a DynamicCache with the prefix for ``batch_size`` rows.

    The per-layer tensors are ``unbind`` views, not ``kv[i, 0]`` indexing: the backward of
    each index writes a zero tensor the size of all of ``kv`` and adds it in, 2L times
    (quadratic in depth), where ``unbind``'s backward is one ``stack``. Rows are ``expand`` views: no copy of the
    prefix per example (PEFT computes it per example).

    ``read_only``: each layer hands back prefix + the new keys without keeping them (one
    forward that returns no cache). Gradient checkpointing replays a layer's forward in the
    backward pass; a cache that grew in the first pass would give the replay the text's keys
    twice, so transformers drops the cache of a checkpointed layer unless the layer only reads
    it (``readers_keep_cache``)."""
    from transformers import DynamicCache

    layers = tuple(
        (k.unsqueeze(0).expand(batch_size, -1, -1, -1), v.unsqueeze(0).expand(batch_size, -1, -1, -1))
        for k, v in (layer.unbind(0) for layer in kv.unbind(0))
    )
    layer_class = _read_only_layer() if read_only else None
    if layer_class is None:
        return DynamicCache(layers)
    cache = DynamicCache()
    cache.layers = []
    for k, v in layers:
        layer = layer_class()
        layer.keep(k, v)
        cache.layers.append(layer)
    return cache


@functools.cache
def _read_only_layer() -> type | None:
    """A DynamicLayer whose ``update`` returns the cached keys plus the new ones and keeps
    nothing; None on a transformers without per-layer cache classes."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class ReadOnlyLayer(DynamicLayer):
        def keep(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            super().update(key_states, value_states)

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
                   **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)

    return ReadOnlyLayer


@contextlib.contextmanager
def readers_keep_cache(model: nn.Module) -> Iterator[None]:
    """While a forward runs with a read-only prefix cache: let transformers' checkpointed
    layers keep it (``_can_checkpoint_with_cache``, for layers that only read the cache).
    Without that they drop ``past_key_values``, and with it the prefix. A no-op where
    transformers has no such switch (the prefix is then lost under checkpointing) or nothing
    is checkpointed."""
    layers = [m for m in model.modules()
              if getattr(m, "gradient_checkpointing", False) is True and hasattr(m, "_can_checkpoint_with_cache")]
    for layer in layers:
        layer._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for layer in layers:
            del layer._can_checkpoint_with_cache  # back to the class's own value


def has_sliding_window(model: nn.Module) -> bool:
    """Whether any attention layer of ``model`` is windowed (a sliding window in use)."""
    config = model.config.get_text_config()
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return True
    return bool(getattr(config, "sliding_window", None)) and getattr(config, "use_sliding_window", True) is not False


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the backbone computes in (a prefix must match its keys)."""
    dtype = getattr(model, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else next(model.parameters()).dtype


def packed_cache(kv: torch.Tensor, owner: torch.Tensor) -> Any:
    """kv: (K, L, 2, H_kv, P, d_h), one prefix per adapter; owner: (B,) the adapter of each
    row -> a DynamicCache whose row b holds adapter ``owner[b]``'s prefix. One gather, whose
    backward adds each row's gradient into its own adapter's slot only."""
    from transformers import DynamicCache

    rows = kv.index_select(0, owner)  # (B, L, 2, H_kv, P, d_h)
    return DynamicCache(tuple(tuple(layer.unbind(1)) for layer in rows.unbind(1)))


def flat_to_kv(flat: torch.Tensor, anatomy: Anatomy) -> torch.Tensor:
    """(P, L*2*H_kv*d_h) in PEFT's layout -> (L, 2, H_kv, P, d_h)."""
    P = flat.shape[0]
    a = anatomy
    return flat.view(P, a.num_layers, 2, a.num_kv_heads, a.head_dim).permute(1, 2, 3, 0, 4)


def kv_to_flat(kv: torch.Tensor) -> torch.Tensor:
    """Inverse of ``flat_to_kv``."""
    L, two, H, P, d = kv.shape
    return kv.permute(3, 0, 1, 2, 4).reshape(P, L * two * H * d)


@torch.no_grad()
def activation_kv(model: nn.Module, token_ids: torch.Tensor, anatomy: Anatomy) -> torch.Tensor:
    """The frozen model's own keys/values for ``token_ids`` (1-D): (L, 2, H_kv, P, d_h).

    Used to initialise prefixes from real activations (Li & Liang's "real words" init; PEFT's
    comparison found KV-init from a prompt far better than random)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    was_training = model.training
    model.eval()
    # the body only: the cache is all we need, and the output layer would read its whole
    # vocabulary matrix for logits nobody uses
    body = getattr(model, "base_model", model)
    body(input_ids=token_ids.unsqueeze(0), attention_mask=torch.ones_like(token_ids).unsqueeze(0),
         past_key_values=cache, use_cache=True)
    model.train(was_training)
    layers = []
    for i in range(anatomy.num_layers):
        layer = cache.layers[i]
        layers.append(torch.stack([layer.keys[0], layer.values[0]]))
    return torch.stack(layers).float()


def init_token_ids(ctx: AttachContext, length: int, init: str, text: str, model: nn.Module) -> torch.Tensor:
    """P token ids for an init: sampled from the vocabulary, or a text's tokens repeated/cut."""
    if init == "text":
        ids = ctx.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"init_text {text!r} tokenizes to nothing")
        reps = -(-length // len(ids))
        return torch.tensor((ids * reps)[:length])
    vocab = model.get_input_embeddings().weight.shape[0]
    special = set(getattr(ctx.tokenizer, "all_special_ids", []) or [])
    g = torch.Generator().manual_seed(ctx.seed)
    # the first 5000 ids of BPE/WordPiece vocabularies are frequent, real words
    pool = torch.tensor([i for i in range(min(vocab, 5000)) if i not in special])
    return pool[torch.randint(len(pool), (length,), generator=g)]


class KVPrefixAdapter(Adapter):
    """Adapter whose subclasses produce the prefix; this class feeds it to the backbone.

    ``shift_positions`` (True, as Li & Liang's GPT-2 ``past`` and PEFT do): the inputs'
    position ids start after the prefix. False keeps the backbone's own positions, so a
    prefix that receives no attention leaves the backbone exactly unchanged (absolute
    position embeddings, GPT-2 and BERT, would otherwise move by P).
    """

    # What one deploys is the prefix itself, never the generator that produced it while
    # training (Li & Liang's MLP is 28x the folded prefix on MiniLM-L6 at P=20).
    PREFIX_KEY = "prefix_kv"
    # the adapter's own parameters that inference still reads (e.g. residual_prefix's gates)
    inference_parameters: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, anatomy: Anatomy, prefix_length: int,
                 shift_positions: bool = True) -> None:
        super().__init__(model)
        self.anatomy = anatomy
        self.prefix_length = prefix_length
        self.shift_positions = shift_positions
        self._folded: torch.Tensor | None = None
        self._deployed = False  # loaded from an inference state: the folded prefix is all there is

    def prefix_kv(self) -> torch.Tensor:
        """(L, 2, H_kv, P, d_h) for the current parameters."""
        raise NotImplementedError

    def _kv(self) -> torch.Tensor:
        return self._folded if self._folded is not None else self.prefix_kv()

    @property
    def extra_keys_per_layer(self) -> int:
        return self.prefix_length

    def extra_flops(self, batch: int, seq_len: int, *, train: bool, folded: bool) -> int:
        """The prefix's generator (Li & Liang's MLP, a residual block: this adapter's Linear
        layers outside the backbone) runs once per step on the P prefix rows, not per example:
        2nP forward, 4nP more for its weight and input gradients (its input, a trained
        tensor, needs one); nothing once folded."""
        if folded:
            return 0
        backbone = {id(m) for m in self.model.modules()}
        n = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear) and id(m) not in backbone)
        return (6 if train else 2) * n * self.prefix_length

    def prefix_mask(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return torch.ones(batch_size, self.prefix_length, dtype=torch.long, device=device)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> Any:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        shift = self._left_padding_to_move(attention_mask, kwargs)
        if shift is None:
            return self._forward(input_ids, attention_mask, **kwargs)
        # text first, padding after it: index j of a row reads its column (j + pad) mod T
        T = input_ids.shape[1]
        order = (torch.arange(T, device=input_ids.device).unsqueeze(0) + shift.unsqueeze(1)) % T
        back = (torch.arange(T, device=input_ids.device).unsqueeze(0) - shift.unsqueeze(1)) % T
        moved = {k: v.gather(1, order) if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[1] == T else v
                 for k, v in kwargs.items()}
        out = self._forward(input_ids.gather(1, order), attention_mask.gather(1, order), **moved)

        def restore(t: torch.Tensor) -> torch.Tensor:
            return t.gather(1, back.view(*back.shape, *([1] * (t.dim() - 2))).expand(-1, -1, *t.shape[2:]))

        if getattr(out, "logits", None) is not None and out.logits.dim() == 3 and out.logits.shape[1] == T:
            out.logits = restore(out.logits)
        if getattr(out, "hidden_states", None) is not None:
            out.hidden_states = tuple(restore(h) for h in out.hidden_states)
        return out

    def _left_padding_to_move(self, attention_mask: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor | None:
        """Each row's count of left padding when it must move behind the text, else None.

        Sliding-window layers (Mistral, Gemma 2's local layers) measure the window in cache
        slots, and left padding sits between the cached prefix and the text: a padded row would
        lose the prefix from its window sooner than the same row alone. With the padding
        after the text (causal attention never looks at it) every row reads the same in any
        batch. Done for a forward that returns no cache, labels or attention maps (whose
        layout would change), on a causal model with a sliding window, when a row has left
        padding (contiguous: a mask of zeros then ones)."""
        if not self.anatomy.is_causal or kwargs.get("use_cache") or kwargs.get("labels") is not None \
                or kwargs.get("output_attentions") or attention_mask.dim() != 2 or not has_sliding_window(self.model):
            return None
        lead = (attention_mask == 0).long().cumprod(1).sum(1)
        if not bool(lead.any()) or not bool((attention_mask.sum(1) + lead == attention_mask.shape[1]).all()):
            return None
        return lead

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
        batch = input_ids.shape[0]
        mask = torch.cat([self.prefix_mask(batch, input_ids.device).to(attention_mask.dtype),
                          attention_mask], dim=1)
        kwargs.setdefault("use_cache", False)
        # the text's positions from its own mask, after the prefix when shifting: with
        # arange positions a left-padded row would sit farther from the prefix
        kwargs = with_positions(self.model, dict(kwargs, attention_mask=attention_mask),
                                offset=self.prefix_length if self.shift_positions else 0)
        kwargs["attention_mask"] = mask
        # in the backbone's dtype (a bf16 model cannot attend to fp32 keys); read-only unless
        # the caller asked for the cache back
        kv = self._kv().to(model_dtype(self.model))
        if kwargs["use_cache"]:
            return self.model(input_ids=input_ids, past_key_values=build_cache(kv, batch), **kwargs)
        with readers_keep_cache(self.model):
            return self.model(input_ids=input_ids, past_key_values=build_cache(kv, batch, read_only=True), **kwargs)

    @classmethod
    def packed_forward(cls, adapters: Sequence[KVPrefixAdapter], rows: Sequence[int],
                       input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                       **kwargs: Any) -> Any:
        """Each row with its own adapter's prefix, through ``adapters[0]``'s backbone.

        Prefixes shorter than the longest (P) are padded in front to P slots that the
        attention mask hides, so a row attends to exactly its own P_k prefix keys; its text
        positions are shifted by its own P_k (when shifting), as alone."""
        model, device = adapters[0].model, input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        P = max(a.prefix_length for a in adapters)
        owner = torch.repeat_interleave(torch.arange(len(adapters), device=device),
                                        torch.tensor(list(rows), device=device))
        kv = torch.stack([F.pad(a._kv(), (0, 0, P - a.prefix_length, 0)) for a in adapters])
        slots = torch.arange(P, device=device)
        hidden = torch.tensor([P - a.prefix_length for a in adapters], device=device)
        prefix_mask = (slots.unsqueeze(0) >= hidden.unsqueeze(1)).index_select(0, owner)
        offsets = torch.tensor([a.prefix_length if a.shift_positions else 0 for a in adapters], device=device)
        kwargs.setdefault("use_cache", False)
        kwargs = with_positions(model, dict(kwargs, attention_mask=attention_mask),
                                offset=offsets.index_select(0, owner).unsqueeze(1))
        kwargs["attention_mask"] = torch.cat([prefix_mask.to(attention_mask.dtype), attention_mask], dim=1)
        return model(input_ids=input_ids, past_key_values=packed_cache(kv, owner), **kwargs)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """generate() with the prefix in the cache; returns prompt + new tokens, like HF.

        ``generate`` counts cached tokens as part of ``input_ids``, so P placeholder ids stand
        in front; a forward pre-hook swaps them for the prefix on every call that starts from
        an empty cache (the first call with use_cache=True, every call with use_cache=False,
        where PEFT's prefix generate fails), with as many rows as the call has (beam search
        expands rows after our call). The placeholders are cut from the output."""
        P, batch = self.prefix_length, input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pad = torch.full((batch, P), int(input_ids[0, -1]), dtype=input_ids.dtype, device=input_ids.device)
        mask = torch.cat([self.prefix_mask(batch, input_ids.device).to(attention_mask.dtype),
                          attention_mask], dim=1)
        with torch.no_grad():
            kv = self._kv().detach().to(model_dtype(self.model))
        if kwargs.get("use_cache", True) is not False and kwargs.get("past_key_values") is None:
            # a cache of full layers: the one generate makes from the config gives sliding-window
            # layers (Mistral, Gemma 2) that drop the oldest keys, the prefix first, so the prefix
            # would no longer be the first P keys (residual_prefix's gates sit there); the
            # window itself is the mask's job, and stays
            from transformers import DynamicCache

            kwargs["past_key_values"] = DynamicCache()
        handle = self.model.register_forward_pre_hook(
            lambda module, args, kw: (args, self._generation_inputs(kv, kw)), with_kwargs=True)
        try:
            out = self.model.generate(input_ids=torch.cat([pad, input_ids], 1), attention_mask=mask, **kwargs)
        finally:
            handle.remove()
        if hasattr(out, "sequences"):  # return_dict_in_generate=True
            out.sequences = out.sequences[:, P:]
            return out
        return out[:, P:]

    def _generation_inputs(self, kv: torch.Tensor, kw: dict[str, Any]) -> dict[str, Any]:
        P = self.prefix_length
        name = "cache" if "cache" in kw else "past_key_values"  # transformers >= 5.24 calls it `cache`
        cache = kw.get(name)
        if kw.get("use_cache") is False:
            # generate still hands back the cache our previous call filled: start afresh
            cache = kw[name] = None
        if cache is None or cache.get_seq_length() == 0:
            ids = kw["input_ids"]
            if ids.shape[1] <= P:
                raise RuntimeError(f"expected {P} placeholder ids before the prompt, got {ids.shape[1]} ids")
            kw["input_ids"] = ids[:, P:]
            for key in ("position_ids", "cache_position"):
                if kw.get(key) is not None:
                    kw[key] = kw[key][..., P:]
            rows = ids.shape[0]
            if cache is None:
                kw[name] = build_cache(kv, rows)
            else:  # the cache generate made: fill it with the prefix, layer by layer
                for i in range(kv.shape[0]):
                    cache.update(kv[i, 0].unsqueeze(0).expand(rows, -1, -1, -1).contiguous(),
                                 kv[i, 1].unsqueeze(0).expand(rows, -1, -1, -1).contiguous(), i)
        if not self.shift_positions and kw.get("position_ids") is not None:
            # generate derives positions from the mask, prefix included: take the prefix back out
            kw["position_ids"] = (kw["position_ids"] - P).clamp_min(0)
        return kw

    @torch.no_grad()
    def fold(self) -> None:
        if not self._deployed:  # a deployed prefix has no generator to recompute it from
            self._folded = self.prefix_kv().detach().clone()

    def unfold(self) -> None:
        if self._deployed:
            raise RuntimeError("this prefix was loaded from its inference state (the folded prefix): "
                               "it cannot train; load the trainable state to continue training")
        self._folded = None

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """The folded prefix (L, 2, H_kv, P, d_h), the parameters named in
        ``inference_parameters`` and whatever trains inside the backbone (a task head)."""
        own = dict(self.named_parameters())
        state = {n: t for n, t in self.trainable_state_dict().items() if n.startswith("model.")}
        state.update({n: own[n].detach() for n in self.inference_parameters})
        with torch.no_grad():
            state[self.PREFIX_KEY] = self._kv().detach()
        return state

    def load_inference_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.inference_state_dict()
        check_state(expected, state, "inference")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                if name != self.PREFIX_KEY:
                    params[name].copy_(value)
        kv = expected[self.PREFIX_KEY]
        self._folded = state[self.PREFIX_KEY].to(device=kv.device, dtype=kv.dtype).clone()
        self._deployed = True

    def peft_export(self, task_type: str) -> tuple[Any, dict[str, torch.Tensor]] | None:
        """PEFT's prefix tuning without its projection (``prefix_projection=False``): its
        ``prompt_encoder`` embedding is the deployed prefix, in ``kv_to_flat``'s layout, by
        key/value heads (tests/test_prefix_equivalence.py). None when inference reads more
        than the prefix (``inference_parameters``, e.g. gates on attention)."""
        import peft

        if self.inference_parameters:
            return None
        if not self.shift_positions:
            raise ConfigError("shift_positions = false keeps the backbone's own positions under the prefix; "
                              "PEFT's prefix tuning always starts the inputs' positions after it, so this "
                              "adapter has no PEFT equivalent (train with shift_positions = true to export)")
        config = peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=self.prefix_length,
                                         prefix_projection=False)
        with torch.no_grad():
            flat = kv_to_flat(self._kv().detach().float()).contiguous().clone()
        return config, {"prompt_embeddings": flat}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._deployed = False  # the generator is back: fold recomputes the prefix from it
        super().load_trainable_state_dict(state)
