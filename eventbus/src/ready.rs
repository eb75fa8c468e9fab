//! Futures finished before they are polled, boxed without an allocation: the trait methods of
//! backends, ackers and inbox stores return boxed futures, and a box of a zero-sized future
//! allocates nothing, where `Box::pin(async { Ok(()) })` allocates per call.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::future::BoxFuture;

use crate::error::Error;

/// Finished with `Ok(())`.
struct Done;

impl Future for Done {
    type Output = Result<(), Error>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

/// Finished with `Ok(ANSWER)`.
struct Answer<const ANSWER: bool>;

impl<const ANSWER: bool> Future for Answer<ANSWER> {
    type Output = Result<bool, Error>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(ANSWER))
    }
}

/// `Ok(())`, boxed without an allocation.
pub(crate) fn done<'a>() -> BoxFuture<'a, Result<(), Error>> {
    Box::pin(Done)
}

/// `Ok(answer)`, boxed without an allocation.
pub(crate) fn answer<'a>(answer: bool) -> BoxFuture<'a, Result<bool, Error>> {
    if answer {
        Box::pin(Answer::<true>)
    } else {
        Box::pin(Answer::<false>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_futures_are_ready_with_their_values() {
        futures::executor::block_on(async {
            assert!(done().await.is_ok());
            assert!(answer(true).await.expect("answer"));
            assert!(!answer(false).await.expect("answer"));
        });
    }

    #[test]
    fn their_boxes_hold_nothing() {
        assert_eq!(std::mem::size_of::<Done>(), 0);
        assert_eq!(std::mem::size_of::<Answer<true>>(), 0);
        assert_eq!(std::mem::size_of::<Answer<false>>(), 0);
    }
}
