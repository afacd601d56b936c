//! Pagemap images and page lookup (in progress).
