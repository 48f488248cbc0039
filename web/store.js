// All client state in one place, so that signing in, signing out and switching teams can wipe it
// with one call: nothing of a previous user or team survives.

export const TOKEN_KEY = 'sandboxctl.token';

export const store = {
  /** The user JWT (also in localStorage, so a reload keeps the session). */
  token: null,
  /** GET /v1/me: user_id, email, name, is_admin, team_id, role. */
  me: null,
  /** GET /v1/teams: the caller's teams with their role in each. */
  teams: [],
};

export function resetStore() {
  store.token = null;
  store.me = null;
  store.teams = [];
}

export function savedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function saveToken(token) {
  store.token = token;
  try {
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
  } catch {
    // private mode without storage: the session lasts until the tab closes
  }
}

/** The active team (the token's), or null. */
export function currentTeam() {
  return store.teams.find((t) => t.id === store.me?.team_id) ?? null;
}

export function hasTeam() {
  return Boolean(store.me?.team_id);
}

/** Owner or admin of the active team. */
export function isTeamAdmin() {
  return ['owner', 'admin'].includes(store.me?.role);
}

/** Hosts are for platform admins and for team owners/admins (their BYOC hosts). */
export function canSeeHosts() {
  return Boolean(store.me?.is_admin) || isTeamAdmin();
}
