# libpdiff: the two commands of the README.
#   make demo   set everything up, then run the mnist-mlp3 demo into demo-out/
#   make test   set everything up, then run the whole test suite
#   make test-peft   PEFT's own loader on generated adapter directories (target/torch-venv, ~4.8 GB)
#   make wheel   target/wheels/pdiff-*.whl (serve-only library inside) and target/wheels-train/
#                pdiff-*.whl (training library, linking the installed torch wheel's libtorch)
#   make test-wheels   the training wheel in a fresh venv (torch from PyPI, ~4.8 GB)
#   make test-torch   the Python binding's PyTorch tests, in a venv with torch from PyPI (4.8 GB)
# Deploying (docs/api.md, "Deploying"):
#   make install PREFIX=/opt/pdiff         full build (training with libtorch, and sampling)
#   make install-serve PREFIX=/opt/pdiff   serve-only build (sampling; no libtorch)
# Both install lib/libpdiff.so, include/pdiff.h + pdiff_features.h + pdiff.hpp,
# lib/pkgconfig/pdiff.pc and lib/cmake/pdiff/ (find_package(pdiff) -> pdiff::pdiff); DESTDIR is
# honoured. Nothing of the build tree is compiled into the library.
SHELL := /bin/bash
PREFIX ?= /usr/local
DESTDIR ?=
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# The serve-only library is built in its own target directory, so that target/release keeps the
# full build that `make build` and the tests use.
SERVE_TARGET := target/serve
# Where the full build's libtorch is (pdiff.pc passes it to the linker): the one setup.sh chose.
TORCH_LIBDIR ?= $(shell sed -n 's/^LIBTORCH = "\(.*\)"/\1\/lib/p' .cargo/config.toml 2>/dev/null)

.PHONY: setup build lib lib-serve wheel demo test test-peft test-torch test-wheels fuzz install install-serve uninstall clean

setup:
	bash scripts/setup.sh

# The whole workspace: target/release/libpdiff.so (full engine) and target/release/pdiff (CLI).
build: setup
	cargo build --release --workspace

# The pdiff wheels (pip install target/wheels/pdiff-*.whl): serve-only libpdiff.so inside, ONNX
# Runtime from the onnxruntime wheel it depends on; the training one's library has its RUNPATH
# into the torch wheel it depends on. manylinux tags by auditwheel (scripts/wheel.sh).
wheel: setup
	bash scripts/wheel.sh serve
	bash scripts/wheel.sh train

test-wheels: setup
	bash scripts/test-wheels.sh

demo: build
	./target/release/pdiff demo --task mnist-mlp3 --out demo-out

test: setup
	bash scripts/test.sh

test-peft: setup
	bash scripts/test-peft.sh

test-torch: setup
	bash scripts/test-torch.sh

fuzz: setup
	bash scripts/fuzz.sh 600

# The shared library alone: full, then serve-only.
lib:
	cargo build --release --lib
lib-serve:
	cargo build --release --no-default-features --lib --target-dir $(SERVE_TARGET)

# Under sudo without cargo on PATH, the library built before (`make lib` / `make lib-serve`) is
# installed as it is.
install:
	@if command -v cargo >/dev/null 2>&1; then $(MAKE) --no-print-directory lib; \
	elif [ ! -f target/release/libpdiff.so ]; then echo "target/release/libpdiff.so is missing: run 'make lib' first" >&2; exit 1; fi
	bash scripts/install.sh full target/release/libpdiff.so "$(DESTDIR)" "$(PREFIX)" "$(VERSION)" "$(TORCH_LIBDIR)"

install-serve:
	@if command -v cargo >/dev/null 2>&1; then $(MAKE) --no-print-directory lib-serve; \
	elif [ ! -f $(SERVE_TARGET)/release/libpdiff.so ]; then echo "$(SERVE_TARGET)/release/libpdiff.so is missing: run 'make lib-serve' first" >&2; exit 1; fi
	bash scripts/install.sh serve $(SERVE_TARGET)/release/libpdiff.so "$(DESTDIR)" "$(PREFIX)" "$(VERSION)"

uninstall:
	rm -f "$(DESTDIR)$(PREFIX)/lib/libpdiff.so" "$(DESTDIR)$(PREFIX)/include/pdiff.h" \
	    "$(DESTDIR)$(PREFIX)/include/pdiff_features.h" "$(DESTDIR)$(PREFIX)/include/pdiff.hpp" \
	    "$(DESTDIR)$(PREFIX)/lib/pkgconfig/pdiff.pc" \
	    "$(DESTDIR)$(PREFIX)/lib/cmake/pdiff/pdiffConfig.cmake" \
	    "$(DESTDIR)$(PREFIX)/lib/cmake/pdiff/pdiffConfigVersion.cmake"
	-rmdir "$(DESTDIR)$(PREFIX)/lib/cmake/pdiff" 2>/dev/null

clean:
	rm -rf target demo-out
