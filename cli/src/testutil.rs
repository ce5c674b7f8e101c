//! Helpers of the command modules' unit tests: parse a command line the
//! way `nubo` would, without the rest of the program.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
struct Flags<A: Args> {
    #[command(flatten)]
    a: A,
}

#[derive(Debug, Parser)]
struct Command<S: Subcommand> {
    #[command(subcommand)]
    c: S,
}

/// `args` parsed as the flags (and positionals) of `A`.
pub fn parse_args<A: Args>(args: &[&str]) -> Result<A, clap::Error> {
    let argv = std::iter::once("nubo").chain(args.iter().copied());
    Flags::<A>::try_parse_from(argv).map(|t| t.a)
}

/// `args` parsed as one of the subcommands `S`.
pub fn parse_cmd<S: Subcommand>(args: &[&str]) -> Result<S, clap::Error> {
    let argv = std::iter::once("nubo").chain(args.iter().copied());
    Command::<S>::try_parse_from(argv).map(|t| t.c)
}
