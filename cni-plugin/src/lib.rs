//! palisade CNI plugin library.
