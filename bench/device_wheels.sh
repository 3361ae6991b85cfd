#!/usr/bin/env bash
# Wheels the GPU machine lacks, downloaded here into .whl/ (git-ignored via .git/info/exclude), in three sets
# so that one device call carries only what it needs (the working tree + carried files must stay ≤ 64 MiB):
#   .whl/common  diffusers (slimmed: only the stable_diffusion and flux pipelines ICG uses), ml-100k data
#   .whl/serve   fastapi, starlette, uvicorn, python-multipart, pydantic (for the `icg serve` check)
#   .whl/clip    open_clip_torch, ftfy, wcwidth (the HPSv2 reward in the training benchmark)
# The machine's Python 3.12 already has torch, transformers, accelerate, pandas, typer, timm, scikit-learn,
# pyarrow, rich, tqdm (see the device tool's KINDS.md). On the device, begin the command with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/common/*.whl .whl/serve/*.whl && export PYTHONPATH=/tmp/site:$PWD/src || exit
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PY:-python3}
get() {  # get FOLDER SPEC...: binary wheels for CPython 3.12 on x86-64 Linux
  local folder=$1; shift
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$folder" "$@"
}
rm -rf .whl/common .whl/serve .whl/clip .whl/tmp
get .whl/tmp diffusers==0.42.1 recbole==1.2.1
get .whl/serve fastapi==0.165.0 starlette==1.10.0 uvicorn==0.55.0 python-multipart==0.0.34 pydantic==2.14.4 \
  pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
get .whl/clip open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
mkdir -p .whl/common
work=$(mktemp -d)
# diffusers without the ~90 pipelines ICG never imports (its package __init__ loads them lazily)
(cd "$work" && unzip -q "$OLDPWD"/.whl/tmp/diffusers-0.42.1-*.whl \
  && find diffusers/pipelines -mindepth 1 -maxdepth 1 -type d ! -name stable_diffusion ! -name flux -exec rm -rf {} + \
  && rm -rf diffusers/modular_pipelines && zip -q -9 -r "$OLDPWD"/.whl/common/diffusers-0.42.1-py3-none-any.whl diffusers diffusers-0.42.1.dist-info)
# recbole: only the MovieLens-100k files ICG reads (found with importlib's find_spec, never imported)
(cd "$work" && unzip -q "$OLDPWD"/.whl/tmp/recbole-1.2.1-*.whl 'recbole/__init__.py' 'recbole-1.2.1.dist-info/*' \
  'recbole/dataset_example/ml-100k/ml-100k.inter' 'recbole/dataset_example/ml-100k/ml-100k.item' \
  'recbole/dataset_example/ml-100k/ml-100k.user' && : > recbole/__init__.py \
  && zip -q -9 -r "$OLDPWD"/.whl/common/recbole-1.2.1-py3-none-any.whl recbole recbole-1.2.1.dist-info)
rm -rf "$work" .whl/tmp
du -sh .whl/*
