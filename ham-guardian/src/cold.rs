//! [`Cold`]: a value that most entities leave at rest, held behind one pointer that is
//! null until it is first written.
//!
//! A box of 10,000 entities keeps one configuration per entity in each of the two processes
//! and one table entry per entity in the HAM. Settings few entities use (an environment,
//! cgroup limits, a placement, …) and state few entities ever have (a checkpoint store, a
//! message queue) would otherwise take their full size in every one of them. Behind a
//! `Cold` they cost 8 bytes where unused; reading an unused one gives the value at rest,
//! and writing it allocates it once.

use std::fmt;
use std::ops::{Deref, DerefMut};

/// A type with a value at rest, kept in static memory, that an unused [`Cold`] reads as.
pub trait AtRest: Sized + 'static {
    /// The value at rest.
    fn at_rest() -> &'static Self;
    /// A new value equal to [`at_rest`](Self::at_rest) (for the first write).
    fn fresh() -> Self;
}

/// A `T` that costs a null pointer while it is at rest (see the module's documentation).
/// Dereferencing never allocates; dereferencing mutably allocates the value at rest the
/// first time, which then stays.
pub struct Cold<T: AtRest>(Option<Box<T>>);

impl<T: AtRest> Cold<T> {
    /// At rest.
    pub const fn rest() -> Self {
        Self(None)
    }

    /// `v`, boxed only if it is not the value at rest.
    pub fn new(v: T) -> Self
    where
        T: PartialEq,
    {
        if &v == T::at_rest() {
            Self(None)
        } else {
            Self(Some(Box::new(v)))
        }
    }

    /// Whether it was ever written (it then holds its own allocation).
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

impl<T: AtRest> Default for Cold<T> {
    fn default() -> Self {
        Self::rest()
    }
}

impl<T: AtRest> Deref for Cold<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_deref().unwrap_or_else(|| T::at_rest())
    }
}

impl<T: AtRest> DerefMut for Cold<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(|| Box::new(T::fresh()))
    }
}

impl<T: AtRest + Clone> Clone for Cold<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T: AtRest + fmt::Debug> fmt::Debug for Cold<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl<T: AtRest + PartialEq> PartialEq for Cold<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Settings {
        names: Vec<String>,
        limit: Option<u64>,
    }

    static REST: Settings = Settings {
        names: Vec::new(),
        limit: None,
    };

    impl AtRest for Settings {
        fn at_rest() -> &'static Self {
            &REST
        }
        fn fresh() -> Self {
            REST.clone()
        }
    }

    #[test]
    fn a_value_at_rest_is_not_allocated_until_written() {
        assert_eq!(std::mem::size_of::<Cold<Settings>>(), 8);
        let mut c: Cold<Settings> = Cold::new(REST.clone());
        assert!(!c.is_allocated());
        assert_eq!(c.limit, None, "reads as the value at rest");
        assert!(!c.is_allocated(), "a read does not allocate");
        c.limit = Some(3);
        assert!(c.is_allocated());
        assert_eq!(c.limit, Some(3));
        let d = c.clone();
        assert_eq!(d, c);
        assert_ne!(d, Cold::rest());
    }

    #[test]
    fn a_value_not_at_rest_is_kept() {
        let c = Cold::new(Settings {
            names: vec!["a".into()],
            limit: None,
        });
        assert!(c.is_allocated());
        assert_eq!(c.names, ["a"]);
    }
}
