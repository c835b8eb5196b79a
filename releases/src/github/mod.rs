//! GitHub Releases publishing (in progress).
