# Sourced by scripts/setup_env.sh and scripts/user_env_check.sh.
# pip_quiet PYTHON ARGS...: `PYTHON -m pip ARGS`, without the notes this workplace's pip configuration
# prints about absent local mirror folders ("WARNING: Location 'file://...' is ignored"); pip's status.
pip_quiet() {
    local py="$1"
    shift
    "$py" -m pip --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location 'file://.*' is ignored" || true; }
    return "${PIPESTATUS[0]}"
}
