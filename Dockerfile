# The course's single-user image for a JupyterHub (Zero to JupyterHub, docker-stacks
# conventions): user jovyan (uid 1000, gid 100), port 8888, JupyterLab with nbgrader's
# student extensions only, Java 17 for Spark, the locked environment, the student
# runtime `dlcloud` and the released labs.
#
# Build it with `python -m dlcloud_course.course_image`: that prepares the build
# context (wheelhouse/, runtime/, docker/, labs/, requirements.lock) on the host,
# because nothing in this build may reach PyPI or a registry.
ARG BASE_IMAGE=dlcloud/debian-python:bookworm

# --- environment: the locked packages, from wheels only ----------------------------
FROM ${BASE_IMAGE} AS environment
COPY requirements.lock /tmp/build/requirements.lock
COPY wheelhouse /tmp/build/wheelhouse
# --no-deps: the lock already names every package; `pip check` proves it is complete.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --no-deps \
        --find-links /tmp/build/wheelhouse -r /tmp/build/requirements.lock \
    && /opt/venv/bin/pip check
# This stage is kept (tagged :environment) as the build cache: labelled for cleanup.
LABEL dlcloud.course-image=1

# --- the image students run -------------------------------------------------------
FROM ${BASE_IMAGE}
ARG NB_USER=jovyan
ARG NB_UID=1000
ARG NB_GID=100
LABEL org.opencontainers.image.title="Deep Learning in the Cloud: course image" \
      org.opencontainers.image.description="JupyterLab, nbgrader (student side), Spark, TensorFlow and the course labs"
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# gid 100 is Debian's "users" group, which Zero to JupyterHub's fsGid gives the home volume.
# The exchange is world-writable as nbgrader's documentation asks; a hub mounts a
# shared volume over it.
RUN useradd --no-log-init --create-home --uid "${NB_UID}" --gid "${NB_GID}" \
        --shell /bin/bash "${NB_USER}" \
    && install -d -m 0777 /srv/nbgrader/exchange

COPY --from=environment /opt/venv /opt/venv
# Java 17 is Debian's openjdk-17-jre-headless, installed in the course base image by
# debootstrap (no apt in an offline build): Spark 4's launcher needs a full runtime.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SHELL=/bin/bash \
    NB_USER=${NB_USER} NB_UID=${NB_UID} NB_GID=${NB_GID} \
    HOME=/home/${NB_USER}

# Students get nbgrader's assignment list and validate button; the formgrader, the
# course list ("Formgrader (local)") and create-assignment are instructors' tools.
# Disabled (and locked in JupyterLab) at the environment's level, which outranks
# the conf.d file in which nbgrader enables all of them.
RUN jupyter server extension disable --sys-prefix \
        nbgrader.server_extensions.formgrader nbgrader.server_extensions.course_list \
    && jupyter labextension disable --level=sys_prefix \
        @jupyter/nbgrader:formgrader @jupyter/nbgrader:course-list \
        @jupyter/nbgrader:create-assignment \
    && jupyter labextension lock --level=sys_prefix \
        @jupyter/nbgrader:formgrader @jupyter/nbgrader:course-list \
        @jupyter/nbgrader:create-assignment

# Settings that apply wherever a student opens a lab, not only in a course folder.
COPY docker/jupyter_server_config.py docker/nbgrader_config.py /etc/jupyter/
# Executable in git (and in the context), so COPY keeps the mode (no --chmod: that needs BuildKit).
COPY docker/start-notebook.sh docker/entrypoint.sh /usr/local/bin/

# The student runtime (not the course tooling) and the released labs. Last, because
# they change most often: a code change rebuilds only these small layers.
COPY runtime /tmp/runtime
RUN pip install --no-cache-dir --no-index --no-deps /tmp/runtime/dlcloud-*.whl \
    && rm -rf /tmp/runtime
COPY labs /opt/dlcloud/labs

USER ${NB_UID}
WORKDIR /home/${NB_USER}
EXPOSE 8888
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["start-notebook.sh"]
