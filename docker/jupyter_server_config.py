"""Jupyter Server settings of the course image, installed in /etc/jupyter.

As in jupyter/docker-stacks: listen on every interface of the container on port 8888
(a hub, or `docker run -p`, connects from outside), open no browser, start in the
home folder. A hub overrides ip, port and base URL on the command line.
"""

c = get_config()  # noqa: F821 -- provided by Jupyter when it loads this file

# Every interface of the container: the hub's proxy, or `docker run -p`, decides who reaches it.
c.ServerApp.ip = "0.0.0.0"
c.ServerApp.port = 8888
c.ServerApp.open_browser = False
c.ServerApp.root_dir = "/home/jovyan"
# Students' code runs in kernels for up to 15 minutes a cell; do not cull busy kernels.
c.MappingKernelManager.cull_busy = False
