//! GitHub Releases as a feed host, without a redirector: the REST client
//! ([`client`]) and the mirroring of a feed directory to one rolling
//! release per extension ([`publish`]).

pub mod client;
pub mod publish;

pub use client::{Asset, Client, GithubConfig, GithubError, Release, RepoSlug, RetryPolicy, Token};
pub use publish::{publish_github, GithubReport, GithubTarget, ReleaseReport};
