class SquadTask: pass
