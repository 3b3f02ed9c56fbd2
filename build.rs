//! Embeds libtorch's library folder as an rpath so the built `vggft` binary
//! runs without LD_LIBRARY_PATH. torch-sys exports the folder as
//! `DEP_TCH_LIBTORCH_LIB` (its `links = "tch"`).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
