module trademaster/benchclient

go 1.22
