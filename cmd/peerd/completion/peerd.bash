# bash completion for peerd. Install as /usr/share/bash-completion/completions/peerd,
# or try it with: source <(peerd completion bash)
#
# Adapted from urfave/cli v2's autocomplete/bash_autocomplete: peerd itself
# prints the candidates when its command line ends in --generate-bash-completion.

_peerd() {
  local cur prev words cword
  COMPREPLY=()
  if declare -F _init_completion >/dev/null 2>&1; then
    _init_completion -n "=:" || return
  elif declare -F _get_comp_words_by_ref >/dev/null 2>&1; then
    _get_comp_words_by_ref -n "=:" cur prev words cword
  else
    # Without the bash-completion package.
    cur="${COMP_WORDS[COMP_CWORD]}"
    words=("${COMP_WORDS[@]}")
    cword=$COMP_CWORD
  fi

  # After a literal "--" only arguments follow, and urfave/cli would run the
  # command instead of completing it: leave those to file name completion.
  local word
  for word in "${words[@]:1:cword-1}"; do
    [[ $word == -- ]] && return 0
  done

  local request=("${words[@]:0:cword}")
  if [[ $cur == -* ]]; then
    # A trailing "-" asks for the command's flags. Not "$cur" itself: a bare
    # "--" would turn completion off (see above) and run the command.
    request+=(-)
  fi
  local candidates
  candidates=$("${request[@]}" --generate-bash-completion 2>/dev/null) || return 0
  local IFS=$'\n'
  COMPREPLY=($(compgen -W "$candidates" -- "$cur"))
  return 0
}

complete -o bashdefault -o default -F _peerd peerd
