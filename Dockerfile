# moe-alexnet: the HTTP inference server on OpenCL.
#
#   docker build -t moe-alexnet .
#   docker run --rm -p 127.0.0.1:8000:8000 -e MOE_RANDOM_WEIGHTS=true moe-alexnet
#
# The default image carries Debian's PoCL, a CPU OpenCL device, so it runs on any
# machine, GPU or not. For a GPU, the ICD loader is already in the
# image; the vendor's driver is mounted or installed (README: "Running on a GPU"):
#   --build-arg OPENCL_ICD_PACKAGES=""                  GPU only: no PoCL nor LLVM (1.0 -> 0.36 GB)
#   --build-arg OPENCL_ICD_PACKAGES="intel-opencl-icd"  Intel GPUs, with --device /dev/dri
ARG DEBIAN_IMAGE=debian:bookworm-slim

# -- build: the project and its dependencies in a virtual environment ------------------
FROM ${DEBIAN_IMAGE} AS build

# Debian versions unpinned (DL3008): bookworm takes only security and stable fixes, and an
# exact pin breaks the build as soon as the archive moves on.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv "$VIRTUAL_ENV"
ENV PATH="$VIRTUAL_ENV/bin:$PATH"
WORKDIR /src

# Dependencies first, from pyproject.toml alone, so that a source change reuses this
# layer (the slow one) instead of downloading every wheel again.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > requirements.txt \
    && pip install -r requirements.txt

COPY README.md ./
COPY service/ service/
COPY experts/ experts/
COPY kernels/ kernels/
# pip and setuptools are not needed at run time (~20 MB).
RUN pip install --no-deps . \
    && pip uninstall --yes pip setuptools \
    && python -c "import kernels, experts, service.http.app"

# -- runtime -----------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS runtime

# Debian's OpenCL ICDs to install beside the loader (see the top of this file).
ARG OPENCL_ICD_PACKAGES="pocl-opencl-icd"

# python3: the interpreter the venv links to. Versions unpinned, as above (DL3008).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 ocl-icd-libopencl1 ${OPENCL_ICD_PACKAGES} \
    && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid, so Kubernetes' runAsNonRoot can check it.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/moe --shell /usr/sbin/nologin moe

COPY --from=build /opt/venv /opt/venv
# Trained models ship here; the folder may be empty until they do (then start with
# MOE_RANDOM_WEIGHTS=true, or mount a repository and point MOE_MODEL_REPOSITORY at it).
COPY models/ /opt/moe-alexnet/models/

# XDG_CACHE_HOME: pyopencl's and PoCL's compiled-kernel caches, under /tmp so that any
# uid can write them and a read-only root filesystem needs only /tmp mounted.
# NVIDIA_DRIVER_CAPABILITIES: with --gpus, the NVIDIA runtime mounts the driver's OpenCL
# library only when "compute" is asked for.
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    XDG_CACHE_HOME=/tmp/cache \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MOE_HOST=0.0.0.0 \
    MOE_PORT=8000 \
    MOE_MODEL_REPOSITORY=/opt/moe-alexnet/models

USER 10001:10001
WORKDIR /home/moe
EXPOSE 8000

# Ready (not only live): 200 once every model is loaded and warm. The start period
# covers loading and the kernel builds of a cold start.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; r.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('MOE_PORT', '8000'), timeout=4)"]

# The server handles SIGTERM itself (readiness off, drain for MOE_DRAIN_TIMEOUT_S):
# give `docker stop` a longer timeout than that (-t 35 for the default 30 s).
CMD ["moe-alexnet", "serve"]
