#!/bin/bash
# Entry point of the course image: give the student their labs, then run the command.
#
# On a hub the home folder is a persistent volume mounted over /home/jovyan, which
# hides whatever the image put there. So the labs live in /opt/dlcloud/labs and are
# copied into ~/labs at start, once: a student's own work is never overwritten.
set -eo pipefail

if [[ ! -e "${HOME}/labs" ]]; then
    cp -R /opt/dlcloud/labs "${HOME}/labs"
fi
exec "$@"
