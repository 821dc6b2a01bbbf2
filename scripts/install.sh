#!/usr/bin/env bash
# Install a built libpdiff.so like a C library (called by `make install` / `make install-serve`):
#   scripts/install.sh full|serve LIBRARY DESTDIR PREFIX VERSION [TORCH_LIBDIR]
# Writes $DESTDIR$PREFIX/{lib/libpdiff.so, include/pdiff.h, include/pdiff_features.h,
# include/pdiff.hpp, lib/pkgconfig/pdiff.pc, lib/cmake/pdiff/pdiffConfig{,Version}.cmake}.
# The files name PREFIX only (pkg-config) or nothing at all (CMake finds its prefix from its own
# location): the install can be moved, DESTDIR staging works.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 5 ] || { echo "usage: $0 full|serve LIBRARY DESTDIR PREFIX VERSION [TORCH_LIBDIR]" >&2; exit 2; }
variant=$1 library=$2 destdir=$3 prefix=$4 version=$5 torch_libdir=${6:-}
case "$variant" in full|serve) ;; *) echo "variant must be full or serve, not '$variant'" >&2; exit 2;; esac
[ -f "$library" ] || { echo "$library is missing" >&2; exit 1; }
# The library must be the variant asked for: a serve-only build exports no pdiff_generator_*.
if nm -D --defined-only "$library" | grep -q ' pdiff_generator_train$'; then built=full; else built=serve; fi
[ "$built" = "$variant" ] || { echo "$library is a $built build, not $variant" >&2; exit 1; }

root="$destdir$prefix"
install -d "$root/lib/pkgconfig" "$root/lib/cmake/pdiff" "$root/include"
install -m 755 "$library" "$root/lib/libpdiff.so"
install -m 644 include/pdiff.h bindings/cpp/pdiff.hpp "$root/include/"
if [ "$variant" = full ]; then
  install -m 644 include/pdiff_features.h "$root/include/pdiff_features.h"
else
  # The same file without PDIFF_FEATURE_TRAIN: the training declarations of pdiff.h disappear.
  sed -e 's|^#define PDIFF_FEATURE_TRAIN 1$|/* serve-only build: PDIFF_FEATURE_TRAIN is not defined */|' \
      include/pdiff_features.h > "$root/include/pdiff_features.h"
  chmod 644 "$root/include/pdiff_features.h"
fi

# pkg-config. A full build's library NEEDs libtorch: the linker must see it too (-rpath-link),
# and the loader finds it at run time beside libpdiff.so ($ORIGIN) or on its own path.
libs='-L${libdir} -Wl,-rpath,${libdir} -lpdiff'
torch_line=
if [ "$variant" = full ] && [ -n "$torch_libdir" ]; then
  torch_line="torch_libdir=$torch_libdir"
  libs="$libs -Wl,-rpath-link,\${torch_libdir}"
fi
cat > "$root/lib/pkgconfig/pdiff.pc" <<PC
# pkg-config file of libpdiff ($variant build), written by scripts/install.sh.
prefix=$prefix
exec_prefix=\${prefix}
libdir=\${exec_prefix}/lib
includedir=\${prefix}/include
features=$([ "$variant" = full ] && echo "train serve" || echo "serve")
$torch_line

Name: pdiff
Description: Neural network parameter diffusion (p-diff): the C ABI of libpdiff (pdiff.h, C++ wrapper pdiff.hpp), $variant build
URL: https://arxiv.org/abs/2402.13144
Version: $version
Libs: $libs
Cflags: -I\${includedir}
PC

# CMake package: find_package(pdiff) -> imported target pdiff::pdiff, relocatable.
cat > "$root/lib/cmake/pdiff/pdiffConfig.cmake" <<'CMAKE'
# CMake package of libpdiff, written by scripts/install.sh:
#   find_package(pdiff REQUIRED)
#   target_link_libraries(app PRIVATE pdiff::pdiff)
# The install prefix is found from this file's location (lib/cmake/pdiff/): the tree can move.
get_filename_component(_pdiff_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
if(NOT TARGET pdiff::pdiff)
  add_library(pdiff::pdiff SHARED IMPORTED)
  set_target_properties(pdiff::pdiff PROPERTIES
    IMPORTED_LOCATION "${_pdiff_prefix}/lib/libpdiff.so"
    IMPORTED_SONAME "libpdiff.so"
    INTERFACE_INCLUDE_DIRECTORIES "${_pdiff_prefix}/include")
endif()
set(pdiff_INCLUDE_DIR "${_pdiff_prefix}/include")
set(pdiff_LIBRARY "${_pdiff_prefix}/lib/libpdiff.so")
CMAKE
cat >> "$root/lib/cmake/pdiff/pdiffConfig.cmake" <<CMAKE
# "ON" when this libpdiff has training (pdiff_dataset_*, pdiff_generator_*).
set(pdiff_FEATURE_TRAIN $([ "$variant" = full ] && echo ON || echo OFF))
unset(_pdiff_prefix)
CMAKE
cat > "$root/lib/cmake/pdiff/pdiffConfigVersion.cmake" <<CMAKE
# Version check of find_package(pdiff X.Y): before 1.0 only the same minor version is compatible.
set(PACKAGE_VERSION "$version")
if(PACKAGE_FIND_VERSION VERSION_GREATER PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
elseif(NOT PACKAGE_FIND_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
else()
  string(REGEX MATCH "^[0-9]+\\\\.[0-9]+" _have "\${PACKAGE_VERSION}")
  string(REGEX MATCH "^[0-9]+\\\\.[0-9]+" _want "\${PACKAGE_FIND_VERSION}")
  if(_have STREQUAL _want)
    set(PACKAGE_VERSION_COMPATIBLE TRUE)
  else()
    set(PACKAGE_VERSION_COMPATIBLE FALSE)
  endif()
  if(PACKAGE_FIND_VERSION STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
endif()
CMAKE
echo "installed libpdiff $version ($variant) into $root"
