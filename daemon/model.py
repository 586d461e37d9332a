"""The model file format, loading, scoring and readable reasons.

A model directory holds ``model.txt`` (LightGBM's own text format; never a
pickle) and ``meta.json``: version, feature schema version, the SHA-256 of
``model.txt``, class names, default policy thresholds, the training data
summary, evaluation figures and reference distributions for drift checks.
A model is refused when its schema version or checksum does not match.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .features import FEATURE_NAMES, SCHEMA_VERSION, Features

if TYPE_CHECKING:
    # Imported only for training and tests (Model.booster): scanning calls
    # LightGBM's C library directly (NativeBooster), so the daemon and its
    # workers never load LightGBM's Python package nor the SciPy it pulls
    # in (about 20 MB per process).
    import lightgbm as lgb

__all__ = [
    "CLASSES",
    "Model",
    "ModelError",
    "Thresholds",
    "Verdict",
    "default_model_dir",
]

log = logging.getLogger(__name__)

CLASSES = ("ham", "spam", "phish")
PHISH = CLASSES.index("phish")
MODEL_FILE = "model.txt"
META_FILE = "meta.json"
# Contributions smaller than this (in log-odds) are not worth naming.
MIN_REASON_CONTRIBUTION = 0.15
# Below this phish probability a message gets no phishing reasons: naming
# the few weak signs of a clean message would only mislead the reader.
MIN_REASON_PROBABILITY = 0.2
MAX_REASONS = 5


class ModelError(Exception):
    """A model directory that cannot be used; the message says why."""


@dataclass(frozen=True)
class Thresholds:
    """Phish probabilities at which the default policy acts."""

    tag: float
    quarantine: float
    reject: float

    def action(self, phish: float) -> str:
        if phish >= self.reject:
            return "reject"
        if phish >= self.quarantine:
            return "quarantine"
        if phish >= self.tag:
            return "tag"
        return "accept"


@dataclass(frozen=True)
class Verdict:
    """What the model thinks of one message."""

    ham: float
    spam: float
    phish: float
    model_version: str
    reasons: tuple[str, ...]

    @property
    def label(self) -> str:
        scores = {"ham": self.ham, "spam": self.spam, "phish": self.phish}
        return max(scores, key=lambda k: scores[k])


def default_model_dir() -> Path:
    """The model bundled inside the package."""
    return Path(str(resources.files("phishgate.daemon.models") / "default"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class PathExplainer:
    """Per-feature contributions to the phish score along each tree's path.

    TreeSHAP (LightGBM's ``pred_contrib``) costs about 8 ms per message for
    this model, more than the rest of the scan together. The path method
    (Saabas) credits each split on a message's decision path with the change
    in node value it causes; it needs only the leaf indices, which LightGBM
    returns in microseconds, and a table built once per model. It
    approximates SHAP values well enough to name the top reasons.

    The table is read from the model's text form, not from
    ``Booster.dump_model()``: that JSON is ten times larger and parsing it
    held the GIL for most of a second, long enough to stall the daemon's
    event loop while a new model was loaded beside the running one.
    """

    def __init__(
        self, model_text: str, n_features: int, n_classes: int, target: int
    ) -> None:
        trees = [
            (index, _leaf_paths(fields))
            for index, fields in enumerate(_tree_blocks(model_text))
            if index % n_classes == target
        ]
        self.n_features = n_features
        self.trees = np.array([index for index, _ in trees], dtype=np.intp)
        # One flat table: the path of (tree t, leaf l) is
        # feats/deltas[start[t, l] : start[t, l] + length[t, l]].
        width = max((max(paths, default=0) + 1 for _, paths in trees), default=1)
        self.start = np.zeros((len(trees), width), dtype=np.intp)
        self.length = np.zeros((len(trees), width), dtype=np.intp)
        feats: list[int] = []
        deltas: list[float] = []
        for row, (_, paths) in enumerate(trees):
            for leaf, (f, d) in paths.items():
                self.start[row, leaf], self.length[row, leaf] = len(feats), len(f)
                feats.extend(f)
                deltas.extend(d)
        self.feats = np.array(feats, dtype=np.intp)
        self.deltas = np.array(deltas, dtype=np.float64)

    def contributions(self, leaves: np.ndarray) -> np.ndarray:
        """Contributions for one row of ``pred_leaf`` output (vectorised)."""
        rows = np.arange(len(self.trees))
        picked = leaves[self.trees].astype(np.intp)
        starts, lengths = self.start[rows, picked], self.length[rows, picked]
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(self.n_features)
        # positions start[i] .. start[i] + length[i] - 1 for every tree, at once
        ends = np.cumsum(lengths)
        index = np.arange(total) - np.repeat(ends - lengths - starts, lengths)
        return np.bincount(
            self.feats[index], weights=self.deltas[index], minlength=self.n_features
        )


_TREE_KEYS = frozenset(
    ("split_feature", "left_child", "right_child", "internal_value", "leaf_value")
)


def _tree_blocks(model_text: str) -> list[dict[str, str]]:
    """The fields of each ``Tree=N`` block of a LightGBM text model, in order."""
    body = model_text.split("\nend of trees", 1)[0]
    blocks: list[dict[str, str]] = []
    for chunk in body.split("\nTree=")[1:]:
        fields: dict[str, str] = {}
        for line in chunk.splitlines()[1:]:
            key, _, value = line.partition("=")
            if key in _TREE_KEYS:
                fields[key] = value
        blocks.append(fields)
    return blocks


def _leaf_paths(fields: dict[str, str]) -> dict[int, tuple[list[int], list[float]]]:
    """Map each leaf index to the (feature, value change) pairs on its path.

    In the text format, child ``c >= 0`` is internal node ``c`` and ``c < 0``
    is leaf ``~c``. A tree that could not split has no splits (continued
    training makes them for a class with nothing left to learn); its one
    leaf is leaf 0 with an empty path.
    """
    if not fields.get("split_feature", "").strip():
        return {0: ([], [])}
    split = [int(v) for v in fields["split_feature"].split()]
    left = [int(v) for v in fields["left_child"].split()]
    right = [int(v) for v in fields["right_child"].split()]
    internal = [float(v) for v in fields["internal_value"].split()]
    leaf_value = [float(v) for v in fields["leaf_value"].split()]
    table: dict[int, tuple[list[int], list[float]]] = {}
    stack: list[tuple[int, list[int], list[float]]] = [(0, [], [])]
    while stack:
        node, feats, deltas = stack.pop()
        value = internal[node]
        for child in (left[node], right[node]):
            child_value = internal[child] if child >= 0 else leaf_value[~child]
            path = ([*feats, split[node]], [*deltas, child_value - value])
            if child >= 0:
                stack.append((child, *path))
            else:
                table[~child] = path
    return table


# LightGBM's C API (c_api.h): the constants and calls NativeBooster uses.
_DTYPE_FLOAT64 = 1
_PREDICT_NORMAL = 0
_PREDICT_LEAF_INDEX = 2


@functools.cache
def _lightgbm_library() -> ctypes.CDLL:
    """``lib_lightgbm.so`` from the installed lightgbm package, not imported."""
    spec = importlib.util.find_spec("lightgbm")
    if spec is None or spec.origin is None:
        raise ModelError("the lightgbm package is not installed")
    folder = Path(spec.origin).parent
    for candidate in (folder / "lib" / "lib_lightgbm.so", folder / "lib_lightgbm.so"):
        if candidate.is_file():
            lib = ctypes.CDLL(str(candidate))
            lib.LGBM_GetLastError.restype = ctypes.c_char_p
            return lib
    raise ModelError(f"lib_lightgbm.so not found in {folder}")


def _log_from_lightgbm(message: bytes) -> None:
    """LightGBM's messages go to our log, not to the C library's stdout."""
    text = message.decode("utf-8", "replace").strip()
    if not text:  # it sends each line's end on its own
        return
    if "[Warning]" in text or "[Fatal]" in text:
        log.warning("lightgbm: %s", text)
    else:
        log.debug("lightgbm: %s", text)


_LIGHTGBM_LOG = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(_log_from_lightgbm)
"""Kept at module level: the C library holds a pointer to it."""


class NativeBooster:
    """A LightGBM model held by LightGBM's C library, called through ctypes.

    The daemon only predicts, one message at a time; LightGBM's Python
    package would add SciPy and its own wrappers to every scanning process
    for that. The calls release the GIL, as the package's do.
    """

    def __init__(self, model_text: str) -> None:
        self._lib = lib = _lightgbm_library()
        # Per thread in LightGBM, so here: models load in worker threads too.
        lib.LGBM_RegisterLogCallback(_LIGHTGBM_LOG)
        self._handle = ctypes.c_void_p()
        iterations = ctypes.c_int()
        self._call(
            lib.LGBM_BoosterLoadModelFromString(
                model_text.encode("utf-8"),
                ctypes.byref(iterations),
                ctypes.byref(self._handle),
            )
        )
        value = ctypes.c_int()
        self._call(lib.LGBM_BoosterGetNumFeature(self._handle, ctypes.byref(value)))
        self.num_feature = value.value
        self._call(lib.LGBM_BoosterGetNumClasses(self._handle, ctypes.byref(value)))
        self.num_class = value.value
        self._call(
            lib.LGBM_BoosterNumModelPerIteration(self._handle, ctypes.byref(value))
        )
        self.num_trees = value.value * iterations.value

    def _call(self, status: int) -> None:
        if status != 0:
            raise ModelError(self._lib.LGBM_GetLastError().decode("utf-8", "replace"))

    def predict(self, matrix: np.ndarray, *, leaves: bool = False) -> np.ndarray:
        """Class probabilities (rows x classes), or leaf indices (rows x trees)."""
        data = np.ascontiguousarray(matrix, dtype=np.float64)
        rows, columns = data.shape
        width = self.num_trees if leaves else self.num_class
        out = np.empty((rows, width), dtype=np.float64)
        written = ctypes.c_int64()
        self._call(
            self._lib.LGBM_BoosterPredictForMat(
                self._handle,
                data.ctypes.data_as(ctypes.c_void_p),
                ctypes.c_int(_DTYPE_FLOAT64),
                ctypes.c_int32(rows),
                ctypes.c_int32(columns),
                ctypes.c_int(1),  # row major
                ctypes.c_int(_PREDICT_LEAF_INDEX if leaves else _PREDICT_NORMAL),
                ctypes.c_int(0),  # from the first iteration
                ctypes.c_int(-1),  # to the last
                b"num_threads=1",
                ctypes.byref(written),
                out.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            )
        )
        if written.value != out.size:
            raise ModelError(f"LightGBM wrote {written.value} values, not {out.size}")
        return out

    def __del__(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.LGBM_BoosterFree(self._handle)


def _split_features(model_text: str) -> set[int]:
    """Indices of the features any tree of a LightGBM text model splits on."""
    used: set[int] = set()
    for line in model_text.split("\nend of trees", 1)[0].splitlines():
        if line.startswith("split_feature="):
            used.update(int(v) for v in line[len("split_feature=") :].split())
    return used


class Model:
    """A loaded, checked model that turns features into verdicts."""

    def __init__(
        self,
        native: NativeBooster,
        meta: dict[str, Any],
        path: Path,
        model_text: str,
    ) -> None:
        self.native = native
        # No copy of the model text (2.6 MB in every scanning process):
        # ``booster`` (training, tests) reads the file when it is asked for.
        self.explainer = PathExplainer(
            model_text,
            native.num_feature,
            len(CLASSES),
            PHISH,
        )
        self.uses_text_hashing = any(
            FEATURE_NAMES[index].startswith(("word_", "bigram_", "char_"))
            for index in _split_features(model_text)
        )
        self.meta = meta
        self.path = path
        self.version: str = str(meta["version"])
        t = meta["thresholds"]
        self.thresholds = Thresholds(
            float(t["tag"]), float(t["quarantine"]), float(t["reject"])
        )

    @classmethod
    def load(cls, path: Path | str | None = None) -> Model:
        """Load and check the model in *path* (the bundled one when None)."""
        directory = Path(path) if path else default_model_dir()
        meta = _read_meta(directory)
        model_file = directory / MODEL_FILE
        if not model_file.is_file():
            raise ModelError(f"{model_file}: missing")
        data = model_file.read_bytes()  # one read for the checksum and the parse
        if hashlib.sha256(data).hexdigest() != meta.get("model_sha256"):
            raise ModelError(f"{model_file}: checksum does not match {META_FILE}")
        try:
            text = data.decode("utf-8")
            native = NativeBooster(text)
        except (UnicodeDecodeError, ModelError) as exc:
            raise ModelError(f"{model_file}: {exc}") from exc
        if native.num_feature != len(FEATURE_NAMES):
            raise ModelError(
                f"{model_file}: {native.num_feature} features, "
                f"schema has {len(FEATURE_NAMES)}"
            )
        if native.num_class != len(CLASSES):
            raise ModelError(
                f"{model_file}: {native.num_class} classes, not {len(CLASSES)}"
            )
        return cls(native, meta, directory, text)

    @functools.cached_property
    def booster(self) -> lgb.Booster:
        """The same model as a LightGBM Python ``Booster`` (training, tests)."""
        import lightgbm as lgb  # lazy: see the TYPE_CHECKING import above

        model_file = self.path / MODEL_FILE
        data = model_file.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.meta.get("model_sha256"):
            raise ModelError(f"{model_file}: changed since the model was loaded")
        return lgb.Booster(model_str=data.decode("utf-8"))

    def score(self, features: list[Features]) -> list[Verdict]:
        """Verdicts for a batch of feature vectors, with reasons."""
        if not features:
            return []
        matrix = np.vstack([f.values for f in features]).astype(np.float64)
        probs = self.native.predict(matrix)
        reasons: list[tuple[str, ...]] = [() for _ in features]
        # Reasons only where they will be shown: most mail is clean, and the
        # leaf lookup and path walk are a third of the model's cost.
        suspicious = np.flatnonzero(probs[:, PHISH] >= MIN_REASON_PROBABILITY)
        if len(suspicious):
            leaves = self.native.predict(matrix[suspicious], leaves=True)
            for row, index in zip(leaves, suspicious, strict=True):
                contrib = self.explainer.contributions(row)
                reasons[index] = reasons_for(contrib, features[index].facts)
        return [
            Verdict(
                ham=float(p[0]),
                spam=float(p[1]),
                phish=float(p[2]),
                model_version=self.version,
                reasons=r,
            )
            for p, r in zip(probs, reasons, strict=True)
        ]

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """Class probabilities for a feature matrix (training and evaluation)."""
        return np.asarray(self.booster.predict(matrix, num_threads=0))


def _read_meta(directory: Path) -> dict[str, Any]:
    meta_file = directory / META_FILE
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{meta_file}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_file}: not a JSON object")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ModelError(
            f"{meta_file}: feature schema {meta.get('schema_version')}, "
            f"this phishgate computes schema {SCHEMA_VERSION}"
        )
    for key in ("version", "thresholds", "model_sha256"):
        if key not in meta:
            raise ModelError(f"{meta_file}: missing key {key!r}")
    return meta


# Readable names of feature families, used in reasons and headers.
REASON_TEXT: dict[str, str] = {
    "from_display_has_addr": "sender name contains an address",
    "from_display_addr_mismatch": "sender name shows another domain",
    "from_display_brand": "sender name claims a brand",
    "from_domain_lookalike": "sender domain imitates a brand",
    "from_freemail": "sent from a freemail account",
    "from_invalid": "malformed From header",
    "from_missing": "no From header",
    "from_risky_tld": "sender domain in a high-abuse TLD",
    "reply_to_mismatch": "Reply-To goes to another domain",
    "reply_to_freemail": "Reply-To is a freemail address",
    "return_path_mismatch": "envelope sender differs from From",
    "msgid_mismatch": "Message-ID domain differs from From",
    "msgid_missing": "no Message-ID",
    "msgid_odd": "malformed Message-ID",
    "date_missing": "no Date header",
    "date_bad": "unparseable Date header",
    "to_undisclosed": "recipients hidden",
    "to_missing": "no To header",
    "subj_brand": "subject names a brand",
    "subj_lexicon": "subject uses urgency or account words",
    "dkim_result": "DKIM signature does not verify",
    "ar_dkim": "DKIM failed upstream",
    "dkim_aligned": "no DKIM signature of the sender's domain",
    "ar_dmarc": "DMARC failed upstream",
    "ar_spf": "SPF failed upstream",
    "url_ip": "link to a bare IP address",
    "url_punycode": "link to a punycode host",
    "url_mixed_script": "link host mixes scripts",
    "url_lookalike_from": "link domain imitates the sender's",
    "url_lookalike_brand": "link domain imitates a brand",
    "url_brand_in_host": "link host uses a brand name",
    "url_text_mismatch": "link text shows another domain",
    "url_shortener": "link through a URL shortener",
    "url_redirector": "link through an open redirector",
    "url_at": "link with @ in it",
    "url_nonstd_port": "link to a non-standard port",
    "url_data": "data: URL",
    "url_javascript": "javascript: URL",
    "url_offdomain": "links to many other domains",
    "url_from_domain_frac": "links not on the sender's domain",
    "url_login_words": "link path asks for login or verification",
    "url_action_text": "link text urges an action",
    "url_risky_tld": "link to a high-abuse TLD",
    "url_brand_offdomain": "names a brand, links elsewhere",
    "url_unsubscribe": "unsubscribe link",
    "url_http_frac": "links without TLS",
    "html_forms": "HTML form in the message",
    "html_password": "HTML form asks for a password",
    "html_form_offdomain": "form posts to another domain",
    "html_hidden_chars": "hidden text in HTML",
    "html_zero_width": "zero-width characters in HTML",
    "html_bidi": "bidirectional control characters",
    "html_img_heavy": "mostly images, little text",
    "html_ext_img": "remote images",
    "html_script": "script in HTML",
    "html_events": "HTML event handlers",
    "html_meta_refresh": "meta refresh redirect",
    "html_data_html": "embedded data:text/html",
    "html_iframe": "frames or embedded objects",
    "html_only": "HTML without a text part",
    "att_html": "HTML attachment",
    "att_svg": "SVG attachment",
    "att_double_ext": "double file extension",
    "att_exe": "executable attachment",
    "att_macro": "macro-capable Office attachment",
    "att_archive": "archive attachment",
    "att_pdf_links": "PDF with links",
    "att_type_mismatch": "attachment type differs from its name",
    "att_disk_image": "disk image attachment",
    "lex_urgency": "urgent wording",
    "lex_credential": "asks about passwords or accounts",
    "lex_payment": "payment wording",
    "lex_prize": "prize or reward wording",
    "lex_delivery": "parcel delivery wording",
    "lex_threat": "threatens the account (suspended, full, closed)",
    "lex_greeting": "generic greeting (dear customer)",
    "text_unsubscribe": "unsubscribe wording",
    "text_money": "money amounts",
    "text_zero_width": "zero-width characters in text",
    "n_defects": "malformed MIME",
    "limit_hit": "exceeds scan limits",
    "hdr_raw_8bit": "raw 8-bit header bytes",
    "mime_version_missing": "no MIME-Version header",
    "hdr_dup_key": "duplicated key headers",
    "text": "wording typical of phishing",
    "size_log": "message size typical of phishing",
    "n_parts": "MIME structure typical of phishing",
    "max_depth": "deeply nested MIME",
    "hdr_count": "header set typical of bulk senders",
    "from_local_len": "long or generated sender name",
    "from_local_digits": "digits in the sender's address",
    "from_subdomains": "sender on a deep subdomain",
    "reply_to_present": "Reply-To set",
    "mailer_present": "no mail client named",
    "to_count": "recipient list typical of bulk mail",
    "cc_count": "no copy recipients",
    "subj_len": "subject length typical of phishing",
    "subj_upper_ratio": "subject in capitals",
    "subj_encoded": "encoded subject",
    "subj_non_ascii": "non-ASCII subject",
    "subj_reply": "not a reply",
    "subj_forward": "presented as a forward",
    "subj_exclaim": "exclamation marks in subject",
    "subj_ticket": "subject carries a reference number",
    "dkim_present": "no DKIM signature",
    "url_count": "number of links",
    "url_domains": "links to several domains",
    "url_max_subdomains": "link on a deep subdomain",
    "url_max_len": "very long link",
    "html_present": "HTML body",
    "html_img": "images",
    "html_text_len": "little visible text",
    "html_link_density": "many links for little text",
    "html_tables": "table layout",
    "att_count": "attachments",
    "att_pdf": "PDF attachment",
    "att_message": "attached message",
    "att_calendar": "calendar invitation",
    "text_len": "body length typical of phishing",
    "text_words": "body length typical of phishing",
    "text_upper_ratio": "text in capitals",
    "text_digit_ratio": "many digits in text",
    "text_non_latin": "script mix in text",
    "text_quoted_lines": "no quoted reply text",
    "text_signature": "no signature block",
    "text_bidi": "bidirectional control characters",
}


def reason_family(name: str) -> str:
    """Map hashed text features to one family; others stand for themselves."""
    if name.startswith(("word_", "bigram_", "char_")):
        return "text"
    return name


def reasons_for(contrib: np.ndarray, facts: dict[str, str]) -> tuple[str, ...]:
    """The strongest contributions towards phish, as readable strings."""
    by_family: dict[str, float] = {}
    for index in np.flatnonzero(contrib > 0):
        family = reason_family(FEATURE_NAMES[index])
        by_family[family] = by_family.get(family, 0.0) + float(contrib[index])
    ranked = sorted(by_family.items(), key=lambda kv: -kv[1])
    reasons: list[str] = []
    for family, weight in ranked:
        if weight < MIN_REASON_CONTRIBUTION or len(reasons) >= MAX_REASONS:
            break
        text = REASON_TEXT.get(family, family.replace("_", " "))
        detail = facts.get(family)
        reasons.append(f"{text} ({detail})" if detail else text)
    return tuple(reasons)
