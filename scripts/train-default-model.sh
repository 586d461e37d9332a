#!/bin/sh
# Rebuild the bundled default model from the public corpora, reproducibly.
#
#   scripts/train-default-model.sh [CORPORA_DIR] [OUT_DIR] [phishgate train options]
#
# CORPORA_DIR defaults to ../shared/corpora (see its README for sources and
# licences); OUT_DIR defaults to daemon/models/default. The split follows
# the corpora's traps: phishing dated <= 2023 trains, 2024 tests; whole ham
# and spam sources are held out for the test part (a modern mailing list,
# HTML-rich 2002 ham, a spam collection); thresholds are chosen on training
# ham sources left out one at a time. The same seed gives the same model.
# `... --references-only` recomputes only the drift feature references of an
# existing model from the same training corpora (see MODEL.md).
set -eu
C=${1:-../shared/corpora}
OUT=${2:-daemon/models/default}
if [ $# -ge 2 ]; then shift 2; else shift $#; fi
exec phishgate train \
    --corpus "$C/phish-nazario-20051114.mbox.gz:phish" \
    --corpus "$C/phish-nazario-phishing0.mbox.gz:phish" \
    --corpus "$C/phish-nazario-phishing1.mbox.gz:phish" \
    --corpus "$C/phish-phishingpot-2019-2022-and-undated.tar.gz:phish" \
    --corpus "$C/phish-phishingpot-2023.tar.gz:phish" \
    --corpus "$C/ham-spamassassin-easy_ham.tar.gz:ham" \
    --corpus "$C/ham-spamassassin-easy_ham_2.tar.gz:ham" \
    --corpus "$C/ham-trec07p-2007.tar.gz:ham" \
    --corpus "$C/ham-lore-openbmc-2019-2026.tar.gz:ham" \
    --corpus "$C/ham-lore-open-iscsi-2019-2026.tar.gz:ham" \
    --corpus "$C/spam-spamassassin-spam.tar.gz:spam" \
    --corpus "$C/spam-trec07p-2007.tar.gz:spam" \
    --test "$C/phish-phishingpot-2024.tar.gz:phish" \
    --test "$C/ham-lore-cake-2019-2026.tar.gz:ham" \
    --test "$C/ham-spamassassin-hard_ham.tar.gz:ham" \
    --test "$C/spam-spamassassin-spam_2.tar.gz:spam" \
    --out "$OUT" "$@"
