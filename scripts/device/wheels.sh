# Source from the repository root: the carried wheels (.whl/: the Python packages the GPU image
# lacks) installed into /tmp/site, which each script then puts first on PYTHONPATH. A call that
# carries no wheels goes on without them (scripts/device/common.sh refuses instead).
mkdir -p /tmp/site
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl 2>/dev/null
