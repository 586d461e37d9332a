"""The model file format, loading, scoring and readable reasons.

A model directory holds ``model.txt`` (LightGBM's own text format; never a
pickle) and ``meta.json``: version, feature schema version, the SHA-256 of
``model.txt``, class names, default policy thresholds, the training data
summary, evaluation figures and reference distributions for drift checks.
A model is refused when its schema version or checksum does not match.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from .features import FEATURE_NAMES, SCHEMA_VERSION, Features

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


class Model:
    """A loaded, checked model that turns features into verdicts."""

    def __init__(self, booster: lgb.Booster, meta: dict[str, Any], path: Path) -> None:
        self.booster = booster
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
        if file_sha256(model_file) != meta.get("model_sha256"):
            raise ModelError(f"{model_file}: checksum does not match {META_FILE}")
        try:
            booster = lgb.Booster(model_file=str(model_file))
        except lgb.basic.LightGBMError as exc:
            raise ModelError(f"{model_file}: {exc}") from exc
        if booster.num_feature() != len(FEATURE_NAMES):
            raise ModelError(
                f"{model_file}: {booster.num_feature()} features, "
                f"schema has {len(FEATURE_NAMES)}"
            )
        return cls(booster, meta, directory)

    def score(self, features: list[Features]) -> list[Verdict]:
        """Verdicts for a batch of feature vectors, with reasons."""
        if not features:
            return []
        matrix = np.vstack([f.values for f in features]).astype(np.float64)
        probs = self.booster.predict(matrix, num_threads=1)
        contrib = self.booster.predict(matrix, pred_contrib=True, num_threads=1)
        width = len(FEATURE_NAMES) + 1
        phish_contrib = contrib[:, PHISH * width : PHISH * width + width - 1]
        return [
            Verdict(
                ham=float(p[0]),
                spam=float(p[1]),
                phish=float(p[2]),
                model_version=self.version,
                reasons=reasons_for(c, f.facts),
            )
            for p, c, f in zip(probs, phish_contrib, features, strict=True)
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
    "text_money": "money amounts",
    "text_zero_width": "zero-width characters in text",
    "n_defects": "malformed MIME",
    "limit_hit": "exceeds scan limits",
    "hdr_raw_8bit": "raw 8-bit header bytes",
    "mime_version_missing": "no MIME-Version header",
    "hdr_dup_key": "duplicated key headers",
    "text": "wording typical of phishing",
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
    reasons = []
    for family, weight in ranked:
        if weight < MIN_REASON_CONTRIBUTION or len(reasons) >= MAX_REASONS:
            break
        text = REASON_TEXT.get(family, family.replace("_", " "))
        detail = facts.get(family)
        reasons.append(f"{text} ({detail})" if detail else text)
    return tuple(reasons)
