#!/bin/bash
# Start the single-user server, as jupyter/docker-stacks' start-notebook does:
# under a JupyterHub (which sets JUPYTERHUB_API_TOKEN) `jupyterhub-singleuser`,
# elsewhere (`docker run`, the tests) JupyterLab. Extra arguments go to the server.
set -eo pipefail

if [[ -n "${JUPYTERHUB_API_TOKEN:-}" ]]; then
    if ! command -v jupyterhub-singleuser >/dev/null; then
        echo "start-notebook.sh: JUPYTERHUB_API_TOKEN is set, so a hub started this server," \
             "but this image has no jupyterhub-singleuser: add jupyterhub (the hub's own" \
             "version) to requirements.in, run make lock and rebuild the image." >&2
        exit 1
    fi
    exec jupyterhub-singleuser "$@"
fi
exec jupyter lab "$@"
