"""``phishgate postfix-snippet`` and ``phishgate install-systemd``.

The snippet is generated from the configuration, so the ports and socket
Postfix is told about are the ones the daemon listens on. The installer
writes the unit files (with ``ExecStart`` pointing at this virtual
environment's ``phishgate``), an example configuration if none exists and
the state directories; with ``--root DIR`` it writes only under DIR, which
is how it is tested.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from .config import Config, load_config

__all__ = ["install_systemd", "next_steps", "postfix_snippet"]

USER = "phishgate"
UNITS = ("phishgate.service", "phishgate-retrain.service", "phishgate-retrain.timer")
STATE_DIR = "/var/lib/phishgate"
"""Where ``StateDirectory=phishgate`` puts the daemon's state."""


def postfix_snippet(config: Config, mode: str) -> str:
    """The main.cf and master.cf lines for the configured front door.

    Both include the smtpd that phishgate hands its own mail to (released
    messages from its store, digests, report receipts): with the content
    filter it is also where scanned mail comes back.
    """
    if mode == "milter":
        content_timeout = max(60, int(config.policy.scan_timeout_s * 3))
        listen = config.milter.listen
        if listen.startswith("inet:"):
            target = "inet:" + listen.removeprefix("inet:")
        else:
            target = listen
        return "\n".join(
            [
                "# /etc/postfix/main.cf",
                f"smtpd_milters = {target}",
                "non_smtpd_milters = $smtpd_milters",
                "milter_protocol = 6",
                "milter_default_action = accept",
                "milter_connect_timeout = 10s",
                "milter_command_timeout = 30s",
                f"milter_content_timeout = {content_timeout}s",
                "",
                "# /etc/postfix/master.cf: where phishgate sends mail of its own",
                "# (store releases, digests, report receipts), not scanned again",
                *_reinject_service(config),
                "",
            ]
        )
    host, _, port = config.proxy.listen.rpartition(":")
    # LMTP, not SMTP: one reply per recipient after DATA, so when one
    # recipient group cannot be re-injected only that group is retried.
    return "\n".join(
        [
            "# /etc/postfix/main.cf",
            f"content_filter = phishgate:[{host}]:{port}",
            "receive_override_options = no_address_mappings",
            "",
            "# /etc/postfix/master.cf",
            "phishgate unix  -       -       n       -       10      lmtp",
            "  -o lmtp_send_xforward_command=yes",
            "  -o disable_mime_output_conversion=yes",
            "  -o lmtp_generic_maps=",
            f"  -o lmtp_data_done_timeout={max(120, int(config.proxy.timeout_s * 2))}s",
            *_reinject_service(config),
            "",
        ]
    )


def _reinject_service(config: Config) -> list[str]:
    """master.cf: the loopback smtpd on ``[proxy] reinject``, no filter."""
    host, _, port = config.proxy.reinject.rpartition(":")
    return [
        f"{host}:{port} inet  n  -  n  -  10  smtpd",
        "  -o content_filter=",
        "  -o receive_override_options=no_unknown_recipient_checks,"
        "no_header_body_checks,no_milters",
        "  -o smtpd_helo_restrictions=",
        "  -o smtpd_client_restrictions=",
        "  -o smtpd_sender_restrictions=",
        "  -o smtpd_relay_restrictions=",
        "  -o smtpd_recipient_restrictions=permit_mynetworks,reject",
        "  -o mynetworks=127.0.0.0/8",
        "  -o smtpd_authorized_xforward_hosts=127.0.0.0/8",
    ]


def _unit_text(name: str, executable: str) -> str:
    text = resources.files("phishgate.daemon").joinpath("data", name).read_text()
    return text.replace("/opt/phishgate/venv/bin/phishgate", executable)


def _example_config() -> str:
    """The example config, with the state directory the units use.

    Left empty, ``state_dir`` means ``$STATE_DIRECTORY`` inside the units
    but ``~/.local/state`` for an admin's ``phishgate log`` or ``phishgate
    quarantine`` from a shell: they would look at another, empty store.
    """
    text = (
        resources.files("phishgate.daemon")
        .joinpath("data", "phishgate.example.toml")
        .read_text()
    )
    return text.replace(
        'state_dir = ""',
        "# Set by install-systemd: the units' StateDirectory=, so that commands\n"
        "# run from a shell use the daemon's store.\n"
        f'state_dir = "{STATE_DIR}"',
        1,
    )


def install_systemd(root: Path, executable: str | None = None) -> list[str]:
    """Write units, config and directories under *root*; returns what it did."""
    executable = (
        executable
        or shutil.which("phishgate")
        or str(Path(sys.executable).with_name("phishgate"))
    )
    done = []
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        (unit_dir / name).write_text(_unit_text(name, executable))
        done.append(f"wrote {unit_dir / name}")
    config_dir = root / "etc/phishgate"
    config_dir.mkdir(parents=True, exist_ok=True)
    config = config_dir / "phishgate.toml"
    if not config.exists():
        config.write_text(_example_config())
        done.append(f"wrote {config}")
    if root == Path("/"):
        done += _create_user()
        if os.path.isdir("/run/systemd/system"):  # systemd is running
            subprocess.run(["systemctl", "daemon-reload"], check=False)
    return done


def next_steps(root: Path) -> str:
    """What the admin does after installing, for the config now under *root*."""
    config = load_config(root / "etc/phishgate/phishgate.toml")
    return (
        "\nAdd to Postfix (or use --mode content-filter):\n\n"
        + postfix_snippet(config, "milter")
        + "\nThen: systemctl enable --now phishgate phishgate-retrain.timer\n"
        # A running Postfix keeps the groups it started with.
        + f"and systemctl restart postfix (now in group {USER})\n"
    )


def _create_user() -> list[str]:
    """The system user, and postfix in its group for the milter socket."""
    done = []
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--home-dir",
                "/var/lib/phishgate",
                "--shell",
                "/usr/sbin/nologin",
                USER,
            ],
            check=True,
        )
        done.append(f"created system user {USER}")
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return done
    subprocess.run(["usermod", "-a", "-G", USER, "postfix"], check=True)
    done.append(f"added postfix to group {USER}")
    return done
