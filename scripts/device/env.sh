# source scripts/device/env.sh  -- environment for every command on the GPU machine
export PYTHONPATH=/tmp/site
export PYTHONSAFEPATH=1          # import redknot_sglang from /tmp/site, not the checkout
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1
export REDKNOT_MODELS=/tmp/models
export REDKNOT_SMOLLM2_GGUF_DIR=/tmp/models/gguf
