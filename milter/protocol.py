"""Milter protocol constants.

The values come from Sendmail's libmilter header ``include/libmilter/mfdef.h``
(sendmail 8.14 and later, milter protocol version 6) and the protocol notes in
``libmilter/docs``. Postfix implements the MTA side in ``src/milter/milter8.c``.

A packet on the wire is a 4-byte length in network byte order, then one command
or reply byte, then ``length - 1`` bytes of data. The length counts the
command byte but not itself.
"""

from __future__ import annotations

from typing import Final

# -- Framing and limits (mfdef.h) ---------------------------------------------

MILTER_LEN_BYTES: Final = 4
"""Size of the length field that starts every packet."""

MILTER_CHUNK_SIZE: Final = 65535
"""MILTER_CHUNK_SIZE: the largest body chunk an MTA sends or a filter replies."""

MILTER_MAX_DATA_SIZE: Final = 65535
"""Default largest packet libmilter accepts (MILTER_MDS_64K)."""

MILTER_MDS_256K: Final = (256 * 1024) - 1
MILTER_MDS_1M: Final = (1024 * 1024) - 1

DEFAULT_MAX_PACKET: Final = 1024 * 1024
"""This library's default packet limit.

Larger than libmilter's 64K because Postfix sends each header in one packet and
its ``header_size_limit`` is 102400 bytes.
"""

SMFI_PROT_VERSION: Final = 6
"""The protocol version this library speaks (SMFI_PROT_VERSION in mfdef.h)."""

SMFI_PROT_VERSION_MIN: Final = 2
"""Oldest MTA protocol version accepted (version 2 added SMFIC_OPTNEG flags)."""

# -- Commands, MTA to filter (SMFIC_*) ----------------------------------------

SMFIC_ABORT: Final = b"A"
"""Abort the current message (Postfix also sends it after every message)."""
SMFIC_BODY: Final = b"B"
SMFIC_CONNECT: Final = b"C"
SMFIC_MACRO: Final = b"D"
SMFIC_BODYEOB: Final = b"E"
"""End of message (end of body)."""
SMFIC_HELO: Final = b"H"
SMFIC_QUIT_NC: Final = b"K"
"""Quit this SMTP session but keep the milter connection for a new one."""
SMFIC_HEADER: Final = b"L"
SMFIC_MAIL: Final = b"M"
SMFIC_EOH: Final = b"N"
SMFIC_OPTNEG: Final = b"O"
SMFIC_QUIT: Final = b"Q"
SMFIC_RCPT: Final = b"R"
SMFIC_DATA: Final = b"T"
SMFIC_UNKNOWN: Final = b"U"
"""An SMTP command the MTA did not recognise."""

# -- Replies, filter to MTA (SMFIR_*) -----------------------------------------

SMFIR_ADDRCPT: Final = b"+"
SMFIR_DELRCPT: Final = b"-"
SMFIR_ADDRCPT_PAR: Final = b"2"
SMFIR_SHUTDOWN: Final = b"4"
SMFIR_ACCEPT: Final = b"a"
SMFIR_REPLBODY: Final = b"b"
SMFIR_CONTINUE: Final = b"c"
SMFIR_DISCARD: Final = b"d"
SMFIR_CHGFROM: Final = b"e"
SMFIR_CONN_FAIL: Final = b"f"
SMFIR_ADDHEADER: Final = b"h"
SMFIR_INSHEADER: Final = b"i"
SMFIR_SETSYMLIST: Final = b"l"
SMFIR_CHGHEADER: Final = b"m"
SMFIR_PROGRESS: Final = b"p"
SMFIR_QUARANTINE: Final = b"q"
"""Put the message on hold. A modification: a final reply must follow."""
SMFIR_REJECT: Final = b"r"
SMFIR_SKIP: Final = b"s"
SMFIR_TEMPFAIL: Final = b"t"
SMFIR_REPLYCODE: Final = b"y"

# -- Actions the filter may take at end of message (SMFIF_*) ------------------

SMFIF_NONE: Final = 0x000
SMFIF_ADDHDRS: Final = 0x001
SMFIF_CHGBODY: Final = 0x002
SMFIF_ADDRCPT: Final = 0x004
SMFIF_DELRCPT: Final = 0x008
SMFIF_CHGHDRS: Final = 0x010
SMFIF_QUARANTINE: Final = 0x020
SMFIF_CHGFROM: Final = 0x040
SMFIF_ADDRCPT_PAR: Final = 0x080
SMFIF_SETSYMLIST: Final = 0x100
"""The filter may request the macros it wants per stage (v6)."""

# -- Protocol steps and options (SMFIP_*) -------------------------------------

SMFIP_NOCONNECT: Final = 0x00000001
SMFIP_NOHELO: Final = 0x00000002
SMFIP_NOMAIL: Final = 0x00000004
SMFIP_NORCPT: Final = 0x00000008
SMFIP_NOBODY: Final = 0x00000010
SMFIP_NOHDRS: Final = 0x00000020
SMFIP_NOEOH: Final = 0x00000040
SMFIP_NR_HDR: Final = 0x00000080
"""No reply to headers (named SMFIP_NOHREPL before v6)."""
SMFIP_NOUNKNOWN: Final = 0x00000100
SMFIP_NODATA: Final = 0x00000200
SMFIP_SKIP: Final = 0x00000400
"""The MTA understands SMFIR_SKIP."""
SMFIP_RCPT_REJ: Final = 0x00000800
"""Also send recipients the MTA rejected."""
SMFIP_NR_CONN: Final = 0x00001000
SMFIP_NR_HELO: Final = 0x00002000
SMFIP_NR_MAIL: Final = 0x00004000
SMFIP_NR_RCPT: Final = 0x00008000
SMFIP_NR_DATA: Final = 0x00010000
SMFIP_NR_UNKN: Final = 0x00020000
SMFIP_NR_EOH: Final = 0x00040000
SMFIP_NR_BODY: Final = 0x00080000
SMFIP_HDR_LEADSPC: Final = 0x00100000
"""Header values keep their leading space, both ways (see postfix-lab pitfall 7)."""
SMFIP_MDS_256K: Final = 0x10000000
SMFIP_MDS_1M: Final = 0x20000000

# -- Macro stages for the v6 macro request (SMFIM_*) --------------------------

SMFIM_CONNECT: Final = 0
SMFIM_HELO: Final = 1
SMFIM_ENVFROM: Final = 2
SMFIM_ENVRCPT: Final = 3
SMFIM_DATA: Final = 4
SMFIM_EOM: Final = 5
SMFIM_EOH: Final = 6

MACRO_STAGE_BY_COMMAND: Final[dict[bytes, int]] = {
    SMFIC_CONNECT: SMFIM_CONNECT,
    SMFIC_HELO: SMFIM_HELO,
    SMFIC_MAIL: SMFIM_ENVFROM,
    SMFIC_RCPT: SMFIM_ENVRCPT,
    SMFIC_DATA: SMFIM_DATA,
    SMFIC_BODYEOB: SMFIM_EOM,
    SMFIC_EOH: SMFIM_EOH,
}
"""Which macro stage the command letter in an SMFIC_MACRO packet belongs to."""

# -- Connect address families (SMFIA_*) ---------------------------------------

SMFIA_UNKNOWN: Final = "U"
SMFIA_UNIX: Final = "L"
SMFIA_INET: Final = "4"
SMFIA_INET6: Final = "6"
