# toolchain.sh — sourced by the scripts that run cargo. `sudo` resets PATH
# (secure_path) and usually HOME, so the Rust toolchain that rustup put in
# ~/.cargo/bin of the user who ran `sudo ./scripts/…` (or of root) is not
# found. When cargo is not on PATH, this adds the first toolchain found:
# $CARGO_HOME, the sudo user's ~/.cargo, then $HOME/.cargo (with the
# matching RUSTUP_HOME). Nothing is installed or changed.
if ! command -v cargo >/dev/null 2>&1; then
  __nubo_homes=()
  [[ -n ${CARGO_HOME:-} ]] && __nubo_homes+=("${CARGO_HOME%/.cargo}")
  if [[ -n ${SUDO_USER:-} ]]; then
    __nubo_homes+=("$(awk -F: -v u="$SUDO_USER" '$1 == u {print $6}' /etc/passwd)")
  fi
  __nubo_homes+=("${HOME:-/root}" /root)
  for __nubo_h in "${__nubo_homes[@]}"; do
    if [[ -n $__nubo_h && -x $__nubo_h/.cargo/bin/cargo ]]; then
      export PATH="$__nubo_h/.cargo/bin:$PATH"
      [[ -z ${RUSTUP_HOME:-} && -d $__nubo_h/.rustup ]] && export RUSTUP_HOME="$__nubo_h/.rustup"
      break
    fi
  done
  unset __nubo_homes __nubo_h
fi
