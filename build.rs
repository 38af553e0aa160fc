//! Marks the PostgreSQL integration tests to run or to be reported as ignored: they run when `DATABASE_URL` says
//! where PostgreSQL is, or when `CI` is set (to anything), where they must; otherwise `cargo test` lists them as
//! ignored (see tests/util/postgres.rs). Cargo builds again when either variable changes.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    println!("cargo::rerun-if-env-changed=DATABASE_URL");
    println!("cargo::rerun-if-env-changed=CI");
    if std::env::var_os("DATABASE_URL").is_some() || std::env::var_os("CI").is_some() {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
