/*
 * pdiff_features.h: what this libpdiff was built with (included by pdiff.h).
 *
 * PDIFF_FEATURE_TRAIN: training (pdiff_dataset_*, pdiff_generator_*) is compiled in. This file
 * is the one of a full build; `make install-serve` installs one without the define, matching a
 * serve-only libpdiff.so. At run time, pdiff_capabilities() & PDIFF_CAPABILITY_TRAIN tells the
 * same for the library actually loaded.
 * SPDX-License-Identifier: Apache-2.0
 */
#ifndef PDIFF_FEATURES_H
#define PDIFF_FEATURES_H

#define PDIFF_FEATURE_TRAIN 1

#endif /* PDIFF_FEATURES_H */
