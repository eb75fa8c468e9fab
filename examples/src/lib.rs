//! Runnable eventbus examples live in this package's `[[example]]` targets.
